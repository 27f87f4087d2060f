// OpenTelemetry trace-context propagation without a hard dependency: when the
// optional peer `@opentelemetry/api` can be loaded, each call's metadata gets the
// active context injected by the globally registered propagator, and a W3C
// `traceparent` built from the active span when that propagator wrote none (the
// API's default propagator is a no-op until an SDK registers one).

/** The slice of @opentelemetry/api used here (kept structural: no type dependency for users). */
interface SpanContextLike {
  traceId: string;
  spanId: string;
  traceFlags: number;
}
interface OtelApiLike {
  context: { active(): unknown };
  propagation: {
    inject(ctx: unknown, carrier: Record<string, string>, setter?: { set(c: Record<string, string>, k: string, v: string): void }): void;
  };
  trace: { getSpanContext(ctx: unknown): SpanContextLike | undefined };
}

let api: OtelApiLike | null | undefined; // undefined: not tried yet; null: not installed
let loading: Promise<void> | undefined;

/** Start loading @opentelemetry/api (once); resolves when it is known whether it is there. */
export function warmTracing(): Promise<void> {
  loading ??= import("@opentelemetry/api").then(
    (m) => {
      const mod = ((m as { default?: unknown }).default ?? m) as Partial<OtelApiLike>;
      api = mod.context && mod.propagation && mod.trace ? (mod as OtelApiLike) : null;
    },
    () => {
      api = null;
    },
  );
  return loading;
}

/** For tests: use this API object (or none) instead of the installed package. */
export function setTracingApi(value: OtelApiLike | null): void {
  api = value;
  loading = Promise.resolve();
}

const HEX32 = /^[0-9a-f]{32}$/;
const HEX16 = /^[0-9a-f]{16}$/;

/** The trace headers for the active context (empty without @opentelemetry/api or an active span). */
export function traceHeadersSync(): Record<string, string> {
  if (!api) return {};
  const carrier: Record<string, string> = {};
  try {
    const ctx = api.context.active();
    api.propagation.inject(ctx, carrier, { set: (c, k, v) => (c[k.toLowerCase()] = v) });
    if (!carrier.traceparent) {
      const sc = api.trace.getSpanContext(ctx);
      if (sc && HEX32.test(sc.traceId) && HEX16.test(sc.spanId) && !/^0+$/.test(sc.traceId) && !/^0+$/.test(sc.spanId)) {
        carrier.traceparent = `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
      }
    }
  } catch {
    return {};
  }
  return carrier;
}

/** traceHeadersSync once the optional package has been looked for. */
export async function traceHeaders(): Promise<Record<string, string>> {
  if (api === undefined) await warmTracing();
  return traceHeadersSync();
}
