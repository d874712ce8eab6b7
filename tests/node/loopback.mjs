// Preloaded with `node --import` in front of a server that listens on all interfaces (e.g. npm
// server-everything's `app.listen(PORT)`): binds it to 127.0.0.1 instead (tests use loopback only),
// and reports the port actually bound, so PORT=0 works (no free-port race).
// Prints one line to stderr: `LISTENING 127.0.0.1:PORT`.
import net from 'node:net';

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
    const first = args[0];
    const isPort = typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first));
    if (isPort && typeof args[1] !== 'string') {
        args.splice(1, 0, process.env.BIND_HOST || '127.0.0.1');
    }
    this.once('listening', () => {
        const address = this.address();
        if (address && typeof address === 'object') {
            process.stderr.write(`LISTENING ${address.address}:${address.port}\n`);
        }
    });
    return listen.apply(this, args);
};
