// The project's ecosystem file as PM2's container mode (pm2-runtime) runs it
// in the image: the service alone, its logs on the container's stdout and
// stderr only (the engine keeps and rotates them, so no log files, and no
// log-rotation app).
const project = require("../ecosystem.config.js");

const serviceName = process.env.APP_NAME || "diabetes-api";

module.exports = {
  apps: project.apps
    .filter((app) => app.name === serviceName)
    .map((app) => ({ ...app, out_file: "/dev/null", error_file: "/dev/null" })),
};
