// PM2 runs the script generated from notebooks/serve.ipynb with the project's
// own Python; the script turns itself into a gunicorn master with several
// workers. Start it with `make serve`, which keeps PM2's state in build/pm2.
const path = require("path");

// The service's settings (DIABETES_PORT, DIABETES_HOST, DIABETES_MODEL_DIR, ...)
// are passed on from the environment of `make serve`; unset ones keep the
// notebook's defaults.
const serviceSettings = Object.fromEntries(
  Object.entries(process.env).filter(([name]) => name.startsWith("DIABETES_")),
);
const logDir = process.env.LOG_DIR || path.join(__dirname, "build", "logs");

module.exports = {
  apps: [
    {
      name: process.env.APP_NAME || "diabetes-api",
      script: path.join(__dirname, "scripts", "serve.py"),
      interpreter: path.join(__dirname, ".venv", "bin", "python"),
      cwd: __dirname,
      env: { PYTHONUNBUFFERED: "1", ...serviceSettings },
      autorestart: true,
      // A master that dies within 5 s of starting counts as a failed start;
      // after 10 in a row PM2 gives up instead of looping forever.
      min_uptime: 5000,
      max_restarts: 10,
      restart_delay: 1000,
      // Measures the gunicorn master only (PM2 does not see the workers).
      max_memory_restart: "300M",
      // Longer than gunicorn's graceful_timeout, so workers can finish.
      kill_timeout: 25000,
      out_file: path.join(logDir, "diabetes-api.out.log"),
      error_file: path.join(logDir, "diabetes-api.error.log"),
      // No PM2 timestamps: the access log batches several lines per write, each
      // with its own time, and gunicorn stamps its own messages.
      time: false,
    },
  ],
};
