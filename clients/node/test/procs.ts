// Test helpers: cxcache / emulator processes of our own (port 0, loopback), and a TCP proxy
// on loopback that can cut and refuse connections (to break a Watch stream on purpose).
import { ChildProcess, spawn } from "node:child_process";
import { createConnection, createServer, Server, Socket } from "node:net";
import { join, resolve } from "node:path";

export const BIN_DIR = process.env.CXCACHE_BIN_DIR ?? resolve(__dirname, "..", "..", "..", "..", "target", "debug");

export interface Proc {
  child: ChildProcess;
  line: string;
  log: () => string;
}

/** Spawn a binary and wait (bounded) for the first stdout/stderr line matching `re`. */
export function startProc(bin: string, args: string[], re: RegExp, timeoutMs = 30_000): Promise<Proc> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(join(BIN_DIR, bin), args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let done = false;
    const timer = setTimeout(() => finish(new Error(`${bin}: no line matching ${re} within ${timeoutMs} ms:\n${out.slice(-2000)}`)), timeoutMs);
    const finish = (err?: Error, line?: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        child.kill("SIGKILL");
        reject(err);
      } else resolvePromise({ child, line: line!, log: () => out });
    };
    const onData = (d: Buffer) => {
      out += d.toString();
      if (out.length > 1_000_000) out = out.slice(-500_000);
      const m = out.split("\n").find((l) => re.test(l));
      if (m) finish(undefined, m);
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.on("error", (e) => finish(e));
    child.on("exit", (code, sig) => finish(new Error(`${bin} exited (${code ?? sig}) before listening:\n${out.slice(-2000)}`)));
  });
}

export async function startEmulator(): Promise<{ proc: Proc; url: string }> {
  const proc = await startProc("genesys-emulator", ["--addr", "127.0.0.1:0"], /^genesys-emulator listening on http:\/\//);
  const url = proc.line.replace(/^genesys-emulator listening on /, "").split(/\s/)[0];
  return { proc, url };
}

export async function startCxcache(emulatorUrl: string): Promise<{ proc: Proc; addr: string }> {
  const proc = await startProc(
    "cxcache",
    ["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--upstream-url", emulatorUrl, "--client-id", "cxcache-demo", "--client-secret", "demo-secret"],
    /^cxcache listening grpc=/,
  );
  const m = /grpc=(\S+)/.exec(proc.line);
  return { proc, addr: m![1] };
}

/** SIGKILL (or another signal) and wait for the exit. */
export function stopProc(p: Proc | undefined, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return Promise.resolve();
  return new Promise((res) => {
    const t = setTimeout(() => p.child.kill("SIGKILL"), 10_000);
    p.child.once("exit", () => {
      clearTimeout(t);
      res();
    });
    p.child.kill(signal);
  });
}

/** A loopback TCP proxy: `cut()` drops every connection, `refuse(true)` closes new ones at once. */
export class TcpProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private refusing = false;
  port = 0;
  connections = 0;
  constructor(public target: { host: string; port: number }) {}

  static parse(addr: string): { host: string; port: number } {
    const i = addr.lastIndexOf(":");
    return { host: addr.slice(0, i), port: Number(addr.slice(i + 1)) };
  }

  get addr(): string {
    return `127.0.0.1:${this.port}`;
  }

  start(): Promise<void> {
    this.server = createServer((client) => {
      if (this.refusing) {
        client.destroy();
        return;
      }
      this.connections++;
      const upstream = createConnection(this.target);
      this.sockets.add(client);
      this.sockets.add(upstream);
      const close = () => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on("error", close).on("close", close);
      upstream.on("error", close).on("close", close);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    return new Promise((res) =>
      this.server!.listen(0, "127.0.0.1", () => {
        this.port = (this.server!.address() as { port: number }).port;
        res();
      }),
    );
  }

  refuse(on: boolean): void {
    this.refusing = on;
  }

  cut(): void {
    for (const s of [...this.sockets]) s.destroy();
    this.sockets.clear();
  }

  stop(): Promise<void> {
    this.cut();
    return new Promise((res) => (this.server ? this.server.close(() => res()) : res()));
  }
}

/** Resolve with the first `event` on `em` whose args pass `pred`, or reject after `ms`. */
export function waitFor<A extends unknown[]>(
  em: { on(e: string, l: (...a: A) => void): unknown; off(e: string, l: (...a: A) => void): unknown },
  event: string,
  ms: number,
  pred: (...a: A) => boolean = () => true,
): Promise<A> {
  return new Promise((res, rej) => {
    const l = (...a: A) => {
      if (!pred(...a)) return;
      clearTimeout(t);
      em.off(event, l);
      res(a);
    };
    const t = setTimeout(() => {
      em.off(event, l);
      rej(new Error(`no '${event}' within ${ms} ms`));
    }, ms);
    em.on(event, l);
  });
}
