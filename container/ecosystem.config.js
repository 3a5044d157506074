// The project's ecosystem file as PM2's container mode (pm2-runtime) runs it
// in the image: the service and its edge, serving the release the image
// carries (RELEASES_DIR, Containerfile) as `make serve` does on a host; their
// logs on the container's stdout and stderr only (the engine keeps and rotates
// them, so no log files, and no log-rotation app).
const project = require("../ecosystem.config.js");

// A model version mounted at run time replaces the release's own model.
const withMountedModel = (env) => ({
  ...env,
  ...(process.env.DIABETES_MODEL_DIR && { DIABETES_MODEL_DIR: process.env.DIABETES_MODEL_DIR }),
});

// The engine keeps and rotates the logs: every app of the project's but its log rotation.
const rotatesLogs = (app) => app.name === "log-rotation";

module.exports = {
  apps: project.apps
    .filter((app) => !rotatesLogs(app))
    .map((app) => ({
      ...app,
      env: withMountedModel(app.env),
      out_file: "/dev/null",
      error_file: "/dev/null",
    })),
};
