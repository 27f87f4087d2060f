package io.cxcache.client;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.opentelemetry.api.trace.propagation.W3CTraceContextPropagator;
import io.opentelemetry.context.Context;
import io.opentelemetry.context.propagation.TextMapSetter;

/**
 * Injects the current OpenTelemetry span context as W3C {@code traceparent} / {@code tracestate}
 * into each call's metadata (nothing when there is no valid current span). Only loaded when
 * opentelemetry-api is on the classpath: see {@link #interceptorIfAvailable()}. It uses the W3C
 * propagator directly rather than GlobalOpenTelemetry, whose first use would freeze the global
 * instance before the application may have installed its SDK.
 */
final class TracePropagation {
  private TracePropagation() {}

  /** The interceptor, or null when opentelemetry-api is not on the classpath. */
  static ClientInterceptor interceptorIfAvailable() {
    try {
      Class.forName("io.opentelemetry.api.trace.propagation.W3CTraceContextPropagator", false, TracePropagation.class.getClassLoader());
      Class.forName("io.opentelemetry.context.Context", false, TracePropagation.class.getClassLoader());
    } catch (ClassNotFoundException | LinkageError e) {
      return null;
    }
    return Otel.interceptor();
  }

  /** Holds every reference to OpenTelemetry types, so nothing loads them without the API. */
  private static final class Otel {
    private static final TextMapSetter<Metadata> SETTER = (carrier, key, value) -> {
      if (carrier != null) {
        Metadata.Key<String> k = Metadata.Key.of(key, Metadata.ASCII_STRING_MARSHALLER);
        carrier.discardAll(k);
        carrier.put(k, value);
      }
    };

    static ClientInterceptor interceptor() {
      return new ClientInterceptor() {
        @Override
        public <Q, R> ClientCall<Q, R> interceptCall(
            MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
          Context context = Context.current();
          return new ForwardingClientCall.SimpleForwardingClientCall<Q, R>(next.newCall(method, options)) {
            @Override
            public void start(Listener<R> listener, Metadata headers) {
              W3CTraceContextPropagator.getInstance().inject(context, headers, SETTER);
              super.start(listener, headers);
            }
          };
        }
      };
    }
  }
}
