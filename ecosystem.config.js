// PM2 runs the script generated from notebooks/serve.ipynb, as the current
// release holds it, with the project's own Python; the script turns itself
// into a gunicorn master with several workers. Start it with `make serve`,
// which builds and checks the release and keeps PM2's state in build/pm2.
const { execFileSync } = require("child_process");
const fs = require("fs");
const path = require("path");

// The service's name: PM2's app and its log files. The Makefile (APP) and
// diabetes/settings.py (APP_NAME) say the same; a test checks that they agree.
const appName = "diabetes-api";

// The release being served (diabetes/versions.py): its script, its copy of
// the project's package and its model, all named through the `current` link,
// so that a worker started after `make serve` or `make rollback` switched the
// link and reloaded gunicorn imports that release, and never the working tree.
const releasesDir = path.resolve(__dirname, process.env.RELEASES_DIR || path.join("build", "releases"));
const currentRelease = path.join(releasesDir, "current");
const python = path.join(__dirname, ".venv", "bin", "python");
// Where a release keeps each part, asked of diabetes/release_layout.py (which
// declares it) rather than spelled here: the project's own, or in the image,
// which holds no working tree, the release's copy.
const layoutFile = [path.join(__dirname, "diabetes"), path.join(currentRelease, "package", "diabetes")]
  .map((folder) => path.join(folder, "release_layout.py"))
  .find((file) => fs.existsSync(file));
const release = JSON.parse(execFileSync(python, ["-I", layoutFile, currentRelease], { encoding: "utf8" }));
// Each app starts through the release's check (diabetes/serving.py): an
// isolated interpreter (-I: no PYTHONPATH, so nothing of the release's package,
// not even a sitecustomize planted there, is imported) checks the release
// against its manifest, then runs the command after it in its place (same
// pid), or refuses to start. The release's own copy of the check, run by path.
const throughTheReleaseCheck = ["-I", release.check, "exec", currentRelease, python];
const releaseVariables = {
  PYTHONPATH: release.package,
  DIABETES_MODEL_DIR: release.model,
};

// Clients meet the edge (HAProxy, diabetes/edge.py) on the service's host and
// port; gunicorn listens behind it on 127.0.0.1 (the `workers_port` setting).
// The edge's stats socket and error pages live in a folder of PM2's own state
// (mode 0700). diabetes/edge.py names these variables too; a test checks that they agree.
const runDir = path.join(process.env.PM2_HOME || path.join(__dirname, "build", "pm2"), "run");
const edgeVariables = { WORKERS_BEHIND_EDGE: "1", EDGE_RUN_DIR: runDir };
const edgeName = `${appName}-edge`;

// The service's settings (DIABETES_PORT, DIABETES_HOST, DIABETES_MODEL_DIR, ...)
// are passed on from the environment of `make serve`; unset ones keep the
// notebook's defaults. Nothing else of that environment is: PM2 would copy all
// of it (any secret of the user's shell) into each app and show it in
// `pm2 jlist`. Each app gets `env` below and the variables named here only.
const serviceSettings = Object.fromEntries(
  Object.entries(process.env).filter(([name]) => name.startsWith("DIABETES_")),
);
const systemVariables = Object.fromEntries(
  ["PATH", "LANG", "LC_ALL", "TZ", "OMP_NUM_THREADS"].filter((name) => process.env[name]).map((name) => [name, process.env[name]]),
);
// PM2 drops each variable of the shell whose name contains one of these
// strings; the empty string is in every name. (`filter_env: true` would say
// the same, but pm2 7 ignores it: it tests the value's length.)
const dropTheShellsEnvironment = [""];
const logDir = process.env.LOG_DIR || path.join(__dirname, "build", "logs");
// Rotation of every log the apps write: rotate a file at 10 MB or at
// midnight, keep 7 compressed ones (pm2-logrotate, from package.json).
const logRotation = {
  max_size: process.env.LOG_MAX_SIZE || "10M",
  retain: 7,
  compress: true,
  rotateInterval: "0 0 * * *",
  workerInterval: Number(process.env.LOG_CHECK_SECONDS || 30),
};

module.exports = {
  apps: [
    {
      name: appName,
      script: release.script,
      interpreter: python,
      interpreter_args: throughTheReleaseCheck,
      cwd: __dirname,
      filter_env: dropTheShellsEnvironment,
      env: { ...systemVariables, PYTHONUNBUFFERED: "1", ...serviceSettings, ...releaseVariables, ...edgeVariables },
      autorestart: true,
      // A master that dies within 5 s of starting counts as a failed start;
      // after 10 in a row PM2 gives up instead of looping forever.
      min_uptime: 5000,
      max_restarts: 10,
      restart_delay: 100,
      // Measures the gunicorn master only (PM2 does not see the workers).
      max_memory_restart: "300M",
      // Longer than the wait for the edge to drain and gunicorn's
      // graceful_timeout together (diabetes/gunicorn_config.py), so workers can finish.
      kill_timeout: 35000,
      out_file: path.join(logDir, `${appName}.out.log`),
      error_file: path.join(logDir, `${appName}.error.log`),
      // No PM2 timestamps: the access log batches several lines per write, each
      // with its own time, and gunicorn stamps its own messages.
      time: false,
    },
    {
      // HAProxy, under a launcher that gives it the service's settings and
      // turns PM2's SIGINT into HAProxy's graceful stop.
      name: edgeName,
      script: python,
      args: [...throughTheReleaseCheck, "-m", "diabetes.edge", "run", currentRelease],
      interpreter: "none",
      cwd: __dirname,
      filter_env: dropTheShellsEnvironment,
      env: { ...systemVariables, PYTHONUNBUFFERED: "1", ...serviceSettings, ...releaseVariables, ...edgeVariables },
      autorestart: true,
      min_uptime: 2000,
      max_restarts: 10,
      restart_delay: 500,
      // Longer than HAProxy's hard-stop-after (diabetes/edge.py, STOP_SECONDS).
      kill_timeout: 27000,
      // PM2's stop goes to the launcher alone, which passes it on as HAProxy's
      // graceful stop; sent to HAProxy too, it would be a hard stop.
      treekill: false,
      out_file: path.join(logDir, `${edgeName}.out.log`),
      error_file: path.join(logDir, `${edgeName}.error.log`),
      time: false,
    },
    {
      // pm2-logrotate is meant to be a global PM2 module (`pm2 install`); here it
      // runs as an app of the project. It reads its settings from ./package.json
      // and the variable named after the module, which PM2 would overwrite for
      // an app of that name: hence its folder as cwd, and another app name.
      name: "log-rotation",
      script: require.resolve("pm2-logrotate/app.js"),
      cwd: path.dirname(require.resolve("pm2-logrotate/package.json")),
      filter_env: dropTheShellsEnvironment,
      // It talks to PM2's daemon, found through PM2_HOME.
      env: {
        ...systemVariables,
        HOME: process.env.HOME,
        PM2_HOME: process.env.PM2_HOME,
        "pm2-logrotate": JSON.stringify(logRotation),
      },
      out_file: path.join(logDir, "log-rotation.out.log"),
      error_file: path.join(logDir, "log-rotation.error.log"),
    },
  ],
};
