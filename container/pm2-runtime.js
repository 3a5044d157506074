// pm2-runtime, PM2's container mode, with PM2's own messages on stderr: the
// container's stdout carries only what the service writes there (its JSON
// access log), as a log collector expects of it.
console.log = console.error;
console.info = console.error;
require("pm2/lib/binaries/Runtime4Docker.js");
