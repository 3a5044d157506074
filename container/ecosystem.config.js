// The project's ecosystem file as PM2's container mode (pm2-runtime) runs it
// in the image: the service and its edge, its logs on the container's stdout and
// stderr only (the engine keeps and rotates them, so no log files, and no
// log-rotation app). The image holds the generated script and installs the
// project's package, instead of a release: the script at app/scripts/, the
// model named by DIABETES_MODEL_DIR (Containerfile).
const path = require("path");
const project = require("../ecosystem.config.js");

const withoutReleaseVariables = ({ PYTHONPATH, DIABETES_MODEL_DIR, ...env }) => ({
  ...env,
  ...(process.env.DIABETES_MODEL_DIR && { DIABETES_MODEL_DIR: process.env.DIABETES_MODEL_DIR }),
});

const runsTheService = (app) => path.basename(app.script) === "serve.py";
const runsTheEdge = (app) => app.args && app.args.includes("diabetes.edge");
// The edge reads the service's settings from settings.json beside the app
// (make image writes it), where a host reads the current release's.
const edgeArgs = ["-m", "diabetes.edge", "run", path.join(__dirname, "..")];

module.exports = {
  apps: project.apps
    .filter((app) => runsTheService(app) || runsTheEdge(app))
    .map((app) => ({
      ...app,
      ...(runsTheService(app) ? { script: path.join(__dirname, "..", "scripts", "serve.py") } : { args: edgeArgs }),
      env: withoutReleaseVariables(app.env),
      out_file: "/dev/null",
      error_file: "/dev/null",
    })),
};
