#!/usr/bin/env bash
# Install the Java client and use it from a fresh Maven project outside the repository, the way an
# application would: proves the installed pom resolves (transitive grpc / protobuf / jackson), the
# jar, -sources.jar and -javadoc.jar are installed, and the manifest names the module.
#
#   clients/java/ci-install-check.sh
#
# Env: CXCACHE_ADDR          when set, the consumer does a live Get of kind "routing.queues"
#                            against it (twice) and prints the sources
#      MAVEN_REPO_LOCAL      local repository to install into and resolve from (default ~/.m2;
#                            an empty temporary one works but downloads every dependency)
#      MVN_ARGS              extra Maven arguments, e.g. "-o" once the repository is warm
#      KEEP_CONSUMER=1       keep the temporary consumer project (its path is printed)
# Exits non-zero on any failure.
set -euo pipefail

JAVA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$JAVA_DIR/../.." && pwd)"
VERSION="$(tr -d '[:space:]' <"$ROOT/VERSION")"
GROUP=io.cxcache
ARTIFACT=cxcache-client
# shellcheck disable=SC2206
MVN=(mvn -B -ntp ${MVN_ARGS:-})
if [[ -n "${MAVEN_REPO_LOCAL:-}" ]]; then
  MVN+=("-Dmaven.repo.local=$MAVEN_REPO_LOCAL")
  REPO="$MAVEN_REPO_LOCAL"
else
  REPO="$HOME/.m2/repository"
fi
log() { echo "ci-install-check: $*" >&2; }

log "installing $GROUP:$ARTIFACT:$VERSION from $JAVA_DIR"
(cd "$JAVA_DIR" && "${MVN[@]}" -q install -DskipTests)

DIR="$REPO/${GROUP//.//}/$ARTIFACT/$VERSION"
for f in "$ARTIFACT-$VERSION.jar" "$ARTIFACT-$VERSION-sources.jar" "$ARTIFACT-$VERSION-javadoc.jar" "$ARTIFACT-$VERSION.pom"; do
  [[ -s "$DIR/$f" ]] || { log "missing from the local repository: $DIR/$f"; exit 1; }
done
if ! unzip -p "$DIR/$ARTIFACT-$VERSION.jar" META-INF/MANIFEST.MF | tr -d '\r' | grep -qx 'Automatic-Module-Name: io.cxcache.client'; then
  log "the jar's manifest has no Automatic-Module-Name: io.cxcache.client"
  exit 1
fi

CONSUMER="$(mktemp -d "${TMPDIR:-/tmp}/cxcache-consumer.XXXXXX")"
if [[ "${KEEP_CONSUMER:-0}" == 1 ]]; then
  log "consumer project kept in $CONSUMER"
else
  trap 'rm -rf "$CONSUMER"' EXIT
fi
mkdir -p "$CONSUMER/src/main/java/example"
cat >"$CONSUMER/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>example</groupId>
  <artifactId>cxcache-consumer</artifactId>
  <version>1</version>
  <properties>
    <maven.compiler.release>17</maven.compiler.release>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
  <dependencies>
    <dependency>
      <groupId>$GROUP</groupId>
      <artifactId>$ARTIFACT</artifactId>
      <version>$VERSION</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-compiler-plugin</artifactId>
        <version>3.14.0</version>
      </plugin>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-resources-plugin</artifactId>
        <version>3.3.1</version>
      </plugin>
      <plugin>
        <groupId>org.codehaus.mojo</groupId>
        <artifactId>exec-maven-plugin</artifactId>
        <version>3.5.0</version>
        <configuration>
          <mainClass>example.Main</mainClass>
          <cleanupDaemonThreads>false</cleanupDaemonThreads>
        </configuration>
      </plugin>
    </plugins>
  </build>
</project>
POM
cat >"$CONSUMER/src/main/java/example/Main.java" <<'JAVA'
package example;

import io.cxcache.client.CacheClient;
import io.cxcache.client.CacheResult;
import io.cxcache.client.GetQuery;
import java.time.Duration;
import java.util.List;
import java.util.Map;

public final class Main {
  public static void main(String[] args) {
    String addr = System.getenv("CXCACHE_ADDR");
    try (CacheClient cache = CacheClient.builder().target(addr == null || addr.isEmpty() ? "127.0.0.1:1" : addr)
        .defaultTimeout(Duration.ofSeconds(10)).build()) {
      System.out.println("consumer: client created (cxcache-client "
          + CacheClient.class.getPackage().getImplementationVersion() + ")");
      if (addr == null || addr.isEmpty()) {
        System.out.println("consumer: CXCACHE_ADDR not set, no live Get");
        return;
      }
      CacheResult first = cache.get(GetQuery.of("routing.queues"));
      CacheResult second = cache.get(GetQuery.of("routing.queues"));
      Map<String, Object> page = first.value(Map.class);
      Object entities = page.get("entities");
      System.out.println("consumer: Get routing.queues source=" + first.source() + " then " + second.source()
          + " key=" + first.key() + " entities=" + (entities instanceof List<?> l ? l.size() : "?"));
    }
  }
}
JAVA
log "building and running the consumer in $CONSUMER"
(cd "$CONSUMER" && "${MVN[@]}" -q compile exec:java)
log "ok"
