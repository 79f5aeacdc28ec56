#!/usr/bin/env bash
# Run the tbedge CPU runtime on an EMULATED aarch64 CPU (qemu-user) on an x86-64 Debian 12 host, and
# compare its screening output film by film with the native x86 run. Emulated timings say nothing
# about speed; this checks that the aarch64 wheels and int8 kernels (NEON/dotprod) give the same answers.
#
#   tools/aarch64-emulated.sh [N_FILMS=10]
#
# Needs: root, apt (arm64 packages from the Debian mirror), PyPI, qemu-user, the repo's .venv (x86
# baseline). Env: ARM=/work/arm64 (all files go there), QEMU_CPU=cortex-a76 (ARMv8.2 + dotprod + fp16,
# the nearest qemu 7.2 model to Jetson Orin's Cortex-A78AE; try cortex-a72 for a Pi 4, max for SVE/i8mm),
# FILMS=/work/shared/data/nih_cxr14_512/images.
set -euo pipefail

N=${1:-10}
REPO=$(cd "$(dirname "$0")/.." && pwd)
ARM=${ARM:-/work/arm64}
ROOT=$ARM/root SITE=$ARM/site
FILMS=${FILMS:-/work/shared/data/nih_cxr14_512/images}
export QEMU_CPU=${QEMU_CPU:-cortex-a76}
HOSTPY=$REPO/.venv/bin/python
mkdir -p "$ARM"

# 1. An arm64 CPython 3.11 sysroot, unpacked from Debian's own arm64 .debs (no chroot, no install).
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -q
  mkdir -p "$ARM/debs" "$ROOT"
  pkgs="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1 libstdc++6 zlib1g
        libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libcrypt1 libncursesw6 libtinfo6
        libreadline8 libdb5.3 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2
        libkrb5support0 libkeyutils1"  # bookworm has no libmpdec3: _decimal bundles it
  (cd "$ARM/debs" && apt-get download $(printf '%s:arm64 ' $pkgs) media-types)
  for d in "$ARM"/debs/*.deb; do dpkg -x "$d" "$ROOT"; done
fi

# 2. The runtime's aarch64 wheels, at the tested pins, installed from the host (pip never runs emulated).
#    tbedge itself is NOT installed: PYTHONPATH points at the checkout, so models/ come from there.
if [ ! -d "$SITE/onnxruntime" ]; then
  deps=$("$HOSTPY" -c 'import tomllib,re;print(" ".join(re.split("[<>=; ]",d)[0] for d in
        tomllib.load(open("'"$REPO"'/pyproject.toml","rb"))["project"]["dependencies"]))')
  "$HOSTPY" -m pip install -q --target "$SITE" --implementation cp --python-version 3.11 --only-binary=:all: \
    --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 -c "$REPO/constraints.txt" $deps
fi

# 3. qemu 7.2 passes the HOST's x86 /proc/cpuinfo through; ONNX Runtime's cpuinfo library then finds no
#    ARM cores and segfaults on import. qemu -L serves $ROOT/<path> before the host's, so write an ARM
#    /proc/cpuinfo there, built from what the emulated CPU really reports (HWCAP bits, MIDR_EL1 read
#    with mrs, which qemu emulates), so tbedge's feature probe stays truthful too.
a64() { PYTHONPATH=$SITE:$REPO qemu-aarch64 -L "$ROOT" "$ROOT/usr/bin/python3.11" "$@"; }
mkdir -p "$ROOT/proc"
a64 - > "$ROOT/proc/cpuinfo.new" <<'EOF'
import ctypes, mmap, os
libc = ctypes.CDLL(None); libc.getauxval.restype = ctypes.c_ulong
h1 = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
      "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
h2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 "
      "i8mm bf16 dgh rng bti mte").split()
hw, hw2 = libc.getauxval(16), libc.getauxval(26)
feats = [n for i, n in enumerate(h1) if hw >> i & 1] + [n for i, n in enumerate(h2) if hw2 >> i & 1]
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(bytes.fromhex("000038d5c0035fd6"))  # mrs x0, midr_el1; ret
midr = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(m)))()
for i in range(os.cpu_count()):
    print(f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {' '.join(feats)}\n"
          f"CPU implementer\t: {midr >> 24 & 0xff:#04x}\nCPU architecture: 8\nCPU variant\t: {midr >> 20 & 0xf:#x}\n"
          f"CPU part\t: {midr >> 4 & 0xfff:#05x}\nCPU revision\t: {midr & 0xf}\n")
EOF
mv "$ROOT/proc/cpuinfo.new" "$ROOT/proc/cpuinfo"

# 4. doctor under emulation (CPU class, features, every shipped bundle's self-test); 2 phantoms: it is slow.
OUT=$ARM/out; mkdir -p "$OUT"
t0=$SECONDS; a64 -m tbedge doctor --json --phantoms 2 > "$OUT/doctor-a64.json" || echo "doctor exited $?"
echo "doctor (aarch64, $QEMU_CPU): $((SECONDS - t0)) s -> $OUT/doctor-a64.json"
"$HOSTPY" - "$OUT/doctor-a64.json" <<'EOF'
import json, sys; r = json.load(open(sys.argv[1])); print("ok:", r["ok"], "cpu:", json.dumps(r["cpu"]))
for b in r["bundles"]: print(f"  self-test {b['path']} ({b['precision']}): {json.dumps(b['self_test'])}")
EOF

# 5. The same N films, screened emulated and native, default int8 bundle and fp32. Films are copied to
#    /tmp (never into the repo). Compared by sha256: probability, triage, lung box.
IMG=/tmp/a64-films; rm -rf "$IMG"; mkdir -p "$IMG"
for d in "$FILMS"/*/; do find "$d" -name '*.png' | sort | sed -n "1,$(((N + 1) / 2))p"; done | sed -n "1,${N}p" | xargs cp -t "$IMG"
for eng in default fp32; do
  t0=$SECONDS; a64 -m tbedge screen "$IMG" --output "/tmp/a64-$eng.jsonl" --strict-engine --engine "$REPO/tbedge/models/$eng" >/dev/null
  ta=$((SECONDS - t0)); t0=$SECONDS
  (cd "$REPO" && "$HOSTPY" -m tbedge screen "$IMG" --output "/tmp/x86-$eng.jsonl" --strict-engine --engine "$REPO/tbedge/models/$eng" >/dev/null)
  echo "== $eng: aarch64 ${ta} s, x86 $((SECONDS - t0)) s ($N films)"
  "$HOSTPY" - "/tmp/a64-$eng.jsonl" "/tmp/x86-$eng.jsonl" <<'EOF'
import json, sys
a, x = ({r["sha256"]: r for r in map(json.loads, open(p)) if r.get("sha256")} for p in sys.argv[1:3])
common = sorted(set(a) & set(x)); assert common, "no films in common"
d = max(abs(a[k]["tb_probability"] - x[k]["tb_probability"]) for k in common)
tri = sum(a[k]["triage"] == x[k]["triage"] for k in common)
box = sum((a[k].get("lungs") or {}).get("bbox") == (x[k].get("lungs") or {}).get("bbox") for k in common)
prec = lambda r: ",".join(f"{n}:{m['precision']}" for n, m in (r.get("models") or {}).items())
print(f"films {len(common)} (a64 {len(a)}, x86 {len(x)}); max |dP| {d:.2e}; triage equal {tri}/{len(common)};"
      f" lungs bbox equal {box}/{len(common)}; precision a64 {prec(a[common[0]])} x86 {prec(x[common[0]])}")
EOF
done
