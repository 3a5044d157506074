// The project's ecosystem file as PM2's container mode (pm2-runtime) runs it
// in the image: the service alone, its logs on the container's stdout and
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

module.exports = {
  apps: project.apps
    .filter(runsTheService)
    .map((app) => ({
      ...app,
      script: path.join(__dirname, "..", "scripts", "serve.py"),
      env: withoutReleaseVariables(app.env),
      out_file: "/dev/null",
      error_file: "/dev/null",
    })),
};
