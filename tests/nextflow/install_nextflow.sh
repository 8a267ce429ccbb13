#!/usr/bin/env bash
# Assemble a pinned Nextflow from Maven Central and write a launcher DEST/nextflow.
#
#   bash tests/nextflow/install_nextflow.sh DEST        # then: DEST/nextflow run . -profile test
#
# For machines that reach Maven Central but not get.nextflow.io / GitHub (the normal install
# is `curl -s https://get.nextflow.io | bash`). Central serves Nextflow's runtime jars up to
# 25.04.4, but its nf-lang only as 25.04.0, so nf-lang is pinned to 25.04.0 (the parser
# library; the pipeline's tests run on this combination). io.seqera:lib-trace is not on
# Central and only the tower/wave plugins use it: it is excluded. No plugin is installed.
# Nothing is downloaded when DEST already holds this version; Maven's cache (~/.m2) is reused.
set -euo pipefail

NXF_VERSION=25.04.4
NF_LANG_VERSION=25.04.0
dest=${1:?usage: install_nextflow.sh DEST}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

if [ -x "$dest/nextflow" ] && [ -f "$dest/lib/nextflow-$NXF_VERSION.jar" ] && [ -f "$dest/lib/.complete" ]; then
    exit 0
fi

command -v mvn >/dev/null || { echo "install_nextflow.sh: mvn not found (apt-get install maven)" >&2; exit 1; }
command -v java >/dev/null || { echo "install_nextflow.sh: java not found (Java 17 or later)" >&2; exit 1; }

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cat > "$build/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.virnucpro</groupId>
  <artifactId>nextflow-runtime</artifactId>
  <version>$NXF_VERSION</version>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>io.nextflow</groupId>
        <artifactId>nf-lang</artifactId>
        <version>$NF_LANG_VERSION</version>
      </dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>io.nextflow</groupId>
      <artifactId>nextflow</artifactId>
      <version>$NXF_VERSION</version>
      <exclusions>
        <exclusion>
          <groupId>io.seqera</groupId>
          <artifactId>lib-trace</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
  </dependencies>
</project>
POM
rm -rf "$dest/lib"
mvn -q -B -f "$build/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$dest/lib"
touch "$dest/lib/.complete"

# The launcher: the JVM flags of Nextflow's own launch script (module access for Groovy,
# Kryo and the NIO providers), then nextflow.cli.Launcher with the user's arguments.
cat > "$dest/nextflow" <<'LAUNCHER'
#!/usr/bin/env bash
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
opens=""
for pkg in java.lang java.io java.nio java.net java.util java.util.concurrent.locks \
    java.util.concurrent.atomic java.util.regex java.nio.file.spi sun.nio.ch sun.nio.fs \
    sun.net.www.protocol.http sun.net.www.protocol.https sun.net.www.protocol.ftp \
    sun.net.www.protocol.file jdk.internal.misc; do
    opens="$opens --add-opens=java.base/$pkg=ALL-UNNAMED"
done
# No plugin can be downloaded where this launcher is meant to be used.
export NXF_OFFLINE=${NXF_OFFLINE:-true}
# Behave as a release build: plugins only from $NXF_HOME/plugins, not from a dev tree.
export NXF_PLUGINS_MODE=${NXF_PLUGINS_MODE:-prod}
# shellcheck disable=SC2086  # NXF_OPTS and $opens are lists of JVM flags
exec "${JAVA_CMD:-java}" -Xshare:auto $opens ${NXF_OPTS:-} \
    -cp "$here/lib/*" nextflow.cli.Launcher "$@"
LAUNCHER
chmod +x "$dest/nextflow"
"$dest/nextflow" -version >/dev/null
