const os = require("os");
const ms = require("ms");

console.log(`hello from node as ${os.userInfo().username} in ${process.cwd()}, ` +
            `NODE_ENV=${process.env.NODE_ENV}, ms("2 days")=${ms("2 days")}`);
