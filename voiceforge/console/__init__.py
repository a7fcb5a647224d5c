"""The console: a page at `/` to record, clone, fine-tune and listen, served from plain static files.

No build step and no CDN: the HTML, CSS and JavaScript under `static/` are served as they are, so the
page works on an offline machine. It belongs to no API family, so it is served without a key (it holds
no secrets); the page itself sends the key the user types with every API call it makes.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response

from voiceforge.console.swagger_ui import register_swagger_ui

# Everything the page loads comes from this origin; audio plays from blob: URLs (MediaSource and the
# finished download) and the waveform canvas needs nothing else. Inline scripts and styles are refused.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data: blob:",
    "media-src 'self' blob: data:", "connect-src 'self' blob:", "object-src 'none'", "base-uri 'none'",
    "frame-ancestors 'none'", "form-action 'self'"))

blp = Blueprint("console", __name__, static_folder="static", static_url_path="/console")


@blp.get("/")
def index() -> Response:
    """The console page."""
    response = blp.send_static_file("index.html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def register_console(app: Flask) -> None:
    """Serve the console at `/` (its files under `/console/`) and Swagger UI's assets locally."""
    app.register_blueprint(blp)
    register_swagger_ui(app)
