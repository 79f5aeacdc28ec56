"""``tbedge ui RESULTS``: a read-only results viewer for the screening operator, served on 127.0.0.1.

A Starlette app over :class:`~tbedge.services.ui_index.ResultIndex`: the worklist (newest first, polled so
new films appear without a reload), one film with its layers, the site panel, a printable page per film and
the day's worklist as CSV. Every asset ships in ``tbedge/webui`` (no CDN, no web font); the pages' Content
Security Policy allows nothing but this server. URLs carry entry ids only: every file opened is named by the
index. It binds to loopback unless given ``--host`` with ``--token``, and never writes to RESULTS.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from .. import __version__, schema
from ..errors import TbedgeError
from .ui_film import (
    WEBUI,
    FilmUnavailable,
    explain,
    film_png,
    lung_contour,
    outputs_by_kind,
    patient,
    plain_words,
    png_shape,
)
from .ui_index import ResultIndex
from .ui_site import Site

TOKEN_MIN_CHARS = 16
COOKIE = "tbedge_ui_token"
SECURITY_HEADERS = {
    # Nothing but this server: no CDN, no font, no beacon, even if a template said otherwise.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
                               "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
                               "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# Result fields a page gets: never ``input`` or output paths (file names can carry patient names).
SHOWN_FIELDS = ("status", "reason", "detail", "sop_instance_uid", "sha256", "qa_flags", "tb_score", "tb_probability",
                "class_probabilities", "triage", "threshold", "models", "lungs", "timing_ms", "duplicate_of",
                "schema_version")


class UiBindError(TbedgeError):
    """A bind that would show results to the network without a token."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Loopback needs nothing; any other address needs a token of TOKEN_MIN_CHARS or more."""
    if token is not None and len(token) < TOKEN_MIN_CHARS:
        raise UiBindError(f"--token must be at least {TOKEN_MIN_CHARS} characters (e.g. python3 -c "
                          "'import secrets; print(secrets.token_urlsafe(24))')")
    if not is_loopback(host) and not token:
        raise UiBindError(f"--host {host} is not a loopback address: anyone on that network could read the results; "
                          "give --token as well, or leave --host at 127.0.0.1")


def _guard(token: str | None, loopback_only: bool):
    """Middleware: Host header check on loopback (a page elsewhere cannot rebind a name to 127.0.0.1 and read
    results), the token when one is set (``?token=`` once, then a cookie), and the security headers."""
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import PlainTextResponse, RedirectResponse

    class Guard(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            if loopback_only and not is_loopback(urlsplit("//" + request.headers.get("host", "")).hostname or ""):
                return PlainTextResponse("this viewer answers on its loopback address only", 403)
            if token:
                auth = request.headers.get("authorization", "")
                given = (request.query_params.get("token") or request.cookies.get(COOKIE)
                         or (auth[7:] if auth.lower().startswith("bearer ") else ""))
                if not hmac.compare_digest(given.encode(), token.encode()):
                    return PlainTextResponse("token required: open the address tbedge ui printed", 401)
                if "token" in request.query_params:  # out of the address bar and the history
                    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                    resp = RedirectResponse(request.url.path + ("?" + urlencode(rest) if rest else ""), 303)
                    resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                    resp.headers.update(SECURITY_HEADERS)
                    return resp
            resp = await call_next(request)
            resp.headers.update(SECURITY_HEADERS)
            return resp

    return Guard


class Viewer:
    """What the routes need: the index, the site panel, templates and options."""

    def __init__(self, results: str | Path, show_patient: bool = False, threshold_report: Path | None = None):
        import jinja2

        self.index = ResultIndex(results)
        self.site = Site(self.index, threshold_report)
        self.show_patient = show_patient
        self.name = Path(results).name
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(WEBUI / "templates")), autoescape=True)

    def page(self, template: str, **ctx) -> str:
        ctx.setdefault("data", {})
        return self.env.get_template(template).render(version=__version__, name=self.name,
                                                      show_patient=self.show_patient, **ctx)

    def worklist(self, offset=0, limit=50, flt="all", q="") -> dict:
        out = self.index.page(offset, limit, flt, q)
        if self.show_patient:
            for row in out["rows"]:
                e = self.index.get(row["id"], refresh=False)  # page() has just refreshed
                row["patient"] = patient(self.index.named_path(e.film)) if e else None
        return out

    def film(self, entry_id: int) -> dict | None:
        """Everything the film view and its print page show for one entry."""
        e = self.index.get(entry_id)
        if e is None:
            return None
        r = self.index.result(e) or e.row()
        outs = outputs_by_kind(r)
        shape, film_error = None, None
        if e.status == schema.STATUS_OK:
            try:
                _, shape = film_png(self.index.named_path(e.film), e.sha256)
            except FilmUnavailable as x:
                film_error = str(x)
        else:
            film_error = "no picture: the input was not scored"
        mask = self.index.named_path(outs.get("mask"))
        shape = shape or png_shape(mask)
        bbox = (r.get("lungs") or {}).get("bbox")
        return {"id": e.id, "key": e.key, "short_key": e.short_key, "time": e.time,
                "result": {k: r.get(k) for k in SHOWN_FIELDS},
                "output_errors": [{"kind": o["kind"], "error": o["error"]} for o in r.get("outputs") or []
                                  if o.get("error")],
                "layers": {"shape": shape, "film": film_error is None, "film_error": film_error, "bbox": bbox,
                           "heat": self._file(outs.get("heat")) is not None and bbox is not None,
                           "overlay": self._file(outs.get("overlay")) is not None,
                           "contour": lung_contour(mask) if shape else [],
                           "fallback_crop": "lungs_implausible" in (r.get("qa_flags") or [])},
                "reasons": explain(r),
                "patient": patient(self.index.named_path(e.film)) if self.show_patient else None,
                "engine": self.site.engine_summary(r)}

    def _file(self, name: str | None) -> Path | None:
        p = self.index.named_path(name)
        return p if p is not None and p.is_file() else None

    def layer_file(self, entry_id: int, kind: str) -> Path | None:
        e = self.index.get(entry_id)
        r = self.index.result(e) if e else None
        return self._file(outputs_by_kind(r).get(kind)) if r else None


def create_app(results: str | Path, token: str | None = None, loopback_only: bool = True,
               show_patient: bool = False, threshold_report: Path | None = None):
    """The Starlette app (``serve`` runs it; tests may too)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    v = Viewer(results, show_patient, threshold_report)
    routes = [Route(path, fn) for path, fn in _routes(v).items()]
    routes.append(Mount("/static", StaticFiles(directory=str(WEBUI / "static")), name="static"))
    app = Starlette(routes=routes, middleware=[Middleware(_guard(token, loopback_only))])
    app.state.viewer = v
    return app


def _routes(v: Viewer) -> dict:
    """URL -> handler. Ids are integers by the route itself: no path from a URL reaches the file system."""
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response

    def missing(what: str):
        return JSONResponse({"error": what}, 404)

    def _int(request, key, default):
        try:
            return int(request.query_params.get(key, default))
        except ValueError:
            return default

    def home(request):
        first = v.worklist(0, 50)  # the page's own state starts at "all"; filters are applied by its script
        return HTMLResponse(v.page("worklist.html", data={"worklist": first, "words": plain_words()}))

    def worklist(request):
        q = request.query_params
        return JSONResponse(v.worklist(_int(request, "offset", 0), _int(request, "limit", 50),
                                       q.get("filter", "all"), q.get("q", "")))

    def site(request):
        return JSONResponse(v.site.panel())

    def film_api(request):
        d = v.film(request.path_params["id"])
        return JSONResponse(d) if d else missing("no such entry")

    def film_page(request, template="film.html"):
        d = v.film(request.path_params["id"])
        if d is None:
            return HTMLResponse(v.page("missing.html"), 404)
        return HTMLResponse(v.page(template, film=d, data={"film": d, "words": plain_words()}))

    def print_page(request):
        return film_page(request, "print.html")

    def film_image(request):
        e = v.index.get(request.path_params["id"])
        if e is None or e.status != schema.STATUS_OK:
            return missing("no film for this entry")
        try:
            png, _ = film_png(v.index.named_path(e.film), e.sha256)
        except FilmUnavailable as x:
            return missing(str(x))
        return Response(png, media_type="image/png")

    def layer(kind):
        def handler(request):
            p = v.layer_file(request.path_params["id"], kind)
            return FileResponse(p, media_type="image/png") if p else missing(f"no {kind} for this entry")
        return handler

    def roc(request):
        p = v.site.roc_png()
        return FileResponse(p, media_type="image/png") if p else missing("no set-threshold ROC")

    def export_csv(request):
        day = request.query_params.get("day", "")
        try:
            d = None if day == "all" else dt.date.fromisoformat(day) if day else dt.date.today()
        except ValueError:
            return JSONResponse({"error": "day must be YYYY-MM-DD or all"}, 400)
        name = f"tbedge-worklist-{d.isoformat() if d else 'all'}.csv"
        return Response(v.site.worklist_csv(d, v.show_patient), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    def health(request):
        v.index.refresh()
        return JSONResponse({"ok": True, "version": v.index.version, "entries": len(v.index.entries)})

    return {"/": home, "/api/worklist": worklist, "/api/site": site, "/api/film/{id:int}": film_api,
            "/film/{id:int}": film_page, "/film/{id:int}/print": print_page,
            "/img/{id:int}/film.png": film_image, "/img/{id:int}/heat.png": layer("heat"),
            "/img/{id:int}/overlay.png": layer("overlay"), "/site/roc.png": roc,
            "/export/worklist.csv": export_csv, "/healthz": health}


def serve(results: str | Path, host: str = "127.0.0.1", port: int = 8600, token: str | None = None,
          show_patient: bool = False, threshold_report: Path | None = None, announce=print) -> None:
    """Run the viewer until Ctrl-C / SIGTERM. Refuses a non-loopback bind without a token."""
    check_bind(host, token)
    import uvicorn

    app = create_app(results, token, loopback_only=is_loopback(host), show_patient=show_patient,
                     threshold_report=threshold_report)
    where = f"[{host}]" if ":" in host else host
    announce(f"tbedge ui: http://{where}:{port}/" + (f"?token={token}" if token else "")
             + f" over {app.state.viewer.index.kind} results ({len(app.state.viewer.index.entries)} so far); "
             "Ctrl-C stops")
    # No access log: it would carry the token; warnings only, and never a file name.
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                  server_header=False, lifespan="off")).run()

