#!/bin/sh
# tbedge container entrypoint (Jetson / JetPack 6).
# 1. Make sure /engines holds TensorRT plans built on *this* device with *this* TensorRT: plans are
#    specific to both, so they are built on first start (minutes) and rebuilt when either changes.
# 2. Run the service: the folder watcher (TBEDGE_MODE=watch, the default) or the DICOM node
#    (TBEDGE_MODE=listen: C-STORE SCP on TBEDGE_PORT as TBEDGE_AE_TITLE; results sent to TBEDGE_SEND_TO,
#    HOST:PORT:AE, when set; docs/dicom.md). Any arguments replace the default command (e.g. `tbedge bench ...`).
set -eu

ENGINES="${TBEDGE_ENGINES:-/engines/default}"
BACKEND="${TBEDGE_BACKEND:-tensorrt}"
MODE="${TBEDGE_MODE:-watch}"

# serve ENGINE_ARGS...: exec the chosen service with the engine arguments given.
serve() {
    if [ "$MODE" = "listen" ]; then
        # shellcheck disable=SC2086  # TBEDGE_ALLOW_AE is a list of --allow-ae options, split on purpose
        exec tbedge listen --out /results --ae-title "${TBEDGE_AE_TITLE:-TBEDGE}" --port "${TBEDGE_PORT:-11112}" \
            ${TBEDGE_SEND_TO:+--send-to "$TBEDGE_SEND_TO"} ${TBEDGE_ALLOW_AE:-} "$@"
    fi
    exec tbedge watch /incoming --out /results "$@"
}

log() { printf '%s tbedge-entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

if [ "$BACKEND" = "tensorrt" ]; then
    if tbedge check-plans "$ENGINES"; then
        log "using TensorRT plans in $ENGINES"
    else
        log "building TensorRT plans for this device into $ENGINES (first start or new TensorRT/GPU)"
        partial="$ENGINES.partial"
        rm -rf "$partial"
        # Build beside the old bundle and swap directories only when the build succeeded, so a
        # crash mid-build never leaves a half-written bundle in place.
        if tbedge build-engine --default --target tensorrt --out "$partial" \
                && tbedge check-plans "$partial"; then
            rm -rf "$ENGINES.old"
            if [ -e "$ENGINES" ]; then mv "$ENGINES" "$ENGINES.old"; fi
            mv "$partial" "$ENGINES"
            rm -rf "$ENGINES.old"
            sync
            log "TensorRT plans ready in $ENGINES"
        else
            rm -rf "$partial"
            if [ "${TBEDGE_CPU_FALLBACK:-1}" = "1" ]; then
                log "WARNING: TensorRT build failed; screening on the CPU (ONNX Runtime) with the shipped bundle"
                serve --backend onnxruntime
            fi
            log "TensorRT build failed and TBEDGE_CPU_FALLBACK=0: exiting"
            exit 1
        fi
    fi
    serve --engine "$ENGINES" --backend tensorrt
fi

serve --backend "$BACKEND"
