"""The interactive API docs page: Swagger UI, with its assets served by the
app itself from the installed swagger-ui-bundle package, so the page works
with no internet access."""

from flask import Blueprint, send_from_directory
from swagger_ui_bundle import swagger_ui_path

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{openapi_url}", dom_id: "#swagger-ui", deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout", validatorUrl: null
    }});
  </script>
</body>
</html>
"""


def docs_blueprint(openapi_url: str, title: str) -> Blueprint:
    docs = Blueprint("docs", __name__)
    page = _PAGE.format(openapi_url=openapi_url, title=title)

    @docs.get("/docs")
    def docs_page():
        return page, 200, {"Content-Type": "text/html; charset=utf-8"}

    @docs.get("/docs/<path:filename>")
    def docs_asset(filename):
        return send_from_directory(swagger_ui_path, filename)

    return docs
