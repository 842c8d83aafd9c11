#!/usr/bin/env bash
# The Jetson install path on real aarch64 binaries under user-mode emulation (qemu-aarch64-static):
# an arm64 Debian root file system, the README's edge install in it from PyPI's aarch64 wheels, then
# `endoedge bundle verify`, `bench parity` (every artifact against the bundle's recorded reference),
# `demo --quick --no-window` and the systemd installer into a temporary root, with
# `systemd-analyze verify` on the unit it writes. Writes benchmarks/arm64/RESULTS.md.
#
#   sudo benchmarks/arm64/run.sh          # or: make arm64
#
# Needs root (debootstrap, chroot, bind mounts) and Debian's archive and PyPI. Not part of `make test`.
# The first run builds the root file system (about 10 min) and caches it outside the repository;
# later runs reuse it and take minutes for the emulated steps. Settings (environment):
#   ARM64_ROOTFS   cached root file system (default /work/cache/arm64-rootfs; `rm -rf` it to rebuild)
#   ARM64_SUITE    Debian suite (default bookworm), ARM64_MIRROR (default http://deb.debian.org/debian)
#   ARM64_MODE     auto | chroot (binfmt_misc + chroot) | proot (proot -q qemu-aarch64-static)
#   ARM64_CPU      CPU qemu emulates: neoverse-n1 (default), cortex-a76 or cortex-a72 (see README.md)
#   BUNDLE         bundle to run (default: endoedge demo's, export/bundles/...)
#   DATA           dataset manifest with the bundle's parity images (default: the train/data/ file its
#                  parity reference names)
#   RESULTS        where to write the results (default benchmarks/arm64/RESULTS.md; '-' for stdout only)
#   NICE           niceness of the emulated steps (default 10: the machine may be shared)
#   PARITY_LIMIT   parity images per run (default 120; 0: all), EVAL_FORMATS (default onnx,tflite-int8)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

ROOTFS=${ARM64_ROOTFS:-/work/cache/arm64-rootfs}
SUITE=${ARM64_SUITE:-bookworm}
MIRROR=${ARM64_MIRROR:-http://deb.debian.org/debian}
MODE=${ARM64_MODE:-auto}
CPU=${ARM64_CPU:-neoverse-n1}
# The bundled default is the one `endoedge demo` runs; the dataset is the one its parity reference names.
BUNDLE=${BUNDLE:-$(grep -rh --include=demo.py '^DEFAULT_BUNDLE = Path(' src/endoedge | head -n 1 |
  sed 's/^DEFAULT_BUNDLE = Path("\(.*\)")$/\1/')}
DATA=${DATA:-train/data/$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["dataset"]["file"])' \
  "$BUNDLE/parity_reference.json" 2>/dev/null || echo gastrovision3.csv)}
RESULTS=${RESULTS:-benchmarks/arm64/RESULTS.md}
NICE=${NICE:-10}
# Emulation is 10-50x slower than the hardware: parity on every k-th reference image (class mix kept,
# `bench parity --limit`), and `evaluate` on the runtimes a Jetson without TensorRT uses ('all': every one).
PARITY_LIMIT=${PARITY_LIMIT:-120}
EVAL_FORMATS=${EVAL_FORMATS:-onnx,tflite-int8}
# Where the checkout goes inside the root: the dataset manifests' image paths are relative
# (../../../shared/data/...), so the checkout sits beside shared/ as it does here.
GUEST_SRC=/work/endoedge
SHARED=$(cd "$repo/.." && pwd)/shared
# What a JetPack 6 image has that a minimal Debian lacks, for the edge path: Python with venv, the
# GStreamer bindings (python3-gi, and python3-cairo, which PyGObject's metadata requires: without it
# `pip check` fails; Ubuntu's desktop image has it), GStreamer's base/good plugins, systemd.
ROOT_PACKAGES=python3,python3-venv,python3-gi,python3-cairo,python3-gst-1.0,gir1.2-gst-plugins-base-1.0,gstreamer1.0-tools,gstreamer1.0-plugins-base,gstreamer1.0-plugins-good,systemd,ca-certificates,libglib2.0-0
ROOT_STAMP="$SUITE $ROOT_PACKAGES"

say() { printf '\n=== %s\n' "$*" >&2; }
die() { printf 'arm64: %s\n' "$*" >&2; exit 2; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, chroot and bind mounts): sudo $0"
[[ $(uname -m) == x86_64 || $(uname -m) == aarch64 ]] || die "unexpected host $(uname -m)"

# --- host tools ----------------------------------------------------------------------------------------
need_apt=()
command -v qemu-aarch64-static >/dev/null || need_apt+=(qemu-user-static binfmt-support)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v proot >/dev/null || need_apt+=(proot)
if [[ ${#need_apt[@]} -gt 0 ]]; then
  say "installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
QEMU=$(command -v qemu-aarch64-static)

# --- how arm64 binaries run here -------------------------------------------------------------------------
# chroot: the kernel's binfmt_misc hands aarch64 ELF files to qemu (every exec, including pip's and
# venv's subprocesses). proot: where binfmt_misc cannot be mounted or written, proot intercepts every
# execve and runs it through qemu itself. Plain `qemu-aarch64-static -L ROOT` runs one process but not
# its children (their execve goes to the kernel, which cannot run aarch64), so pip cannot run that way.
binfmt_interp=
binfmt_ready() {
  local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
  [[ -f $entry ]] && grep -qx enabled "$entry" || return 1
  binfmt_interp=$(sed -n 's/^interpreter //p' "$entry")
}
setup_binfmt() {
  binfmt_ready && return 0
  if [[ ! -f /proc/sys/fs/binfmt_misc/status ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || return 1
  fi
  if command -v update-binfmts >/dev/null; then
    update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  fi
  binfmt_ready
}
case "$MODE" in
  auto) if setup_binfmt; then MODE=chroot; else MODE=proot; fi ;;
  chroot) setup_binfmt || die "ARM64_MODE=chroot but binfmt_misc has no usable qemu-aarch64 entry" ;;
  proot) ;;
  *) die "ARM64_MODE must be auto, chroot or proot" ;;
esac
say "emulation: $MODE, CPU $CPU ($("$QEMU" --version | head -n 1))"

# The CPU: qemu's default ("max") has SVE and SME, which no Jetson has; under it numpy's float32 matmul
# returned NaN here. Jetson Orin's Cortex-A78AE is an ARMv8.2 core with FP16 and dot product and no SVE:
# Neoverse-N1 has the same extensions. qemu 7.2 also passes the host's x86 /proc/cpuinfo through, on
# which ONNX Runtime's CPU detection (pytorch/cpuinfo) crashes at import: the guest gets an arm64
# /proc/cpuinfo describing the emulated core, as the kernel of such a machine would write it.
case "$CPU" in
  neoverse-n1) cpu_part=0xd0c cpu_variant=0x3 cpu_rev=1
    cpu_features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs" ;;
  cortex-a76) cpu_part=0xd0b cpu_variant=0x4 cpu_rev=1
    cpu_features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
  cortex-a72) cpu_part=0xd08 cpu_variant=0x0 cpu_rev=3
    cpu_features="fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid" ;;
  *) die "ARM64_CPU must be neoverse-n1, cortex-a76 or cortex-a72 (a /proc/cpuinfo is written for each)" ;;
esac
write_cpuinfo() {
  local i
  for ((i = 0; i < $(nproc); i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$i" "$cpu_features"
    printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "$cpu_variant" "$cpu_part" "$cpu_rev"
  done >"$ROOTFS/.endoedge-cpuinfo"
}

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT

bind() {  # bind SRC DEST-in-root [ro]
  local dest="$ROOTFS$2"
  mkdir -p "$dest"
  mountpoint -q "$dest" && return 0
  mount --bind "$1" "$dest"
  mounted+=("$dest")
  [[ ${3:-} == ro ]] && mount -o remount,bind,ro "$dest"
  return 0
}

mount_guest() {
  [[ $MODE == chroot ]] || return 0
  mkdir -p "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev"
  if ! mountpoint -q "$ROOTFS/proc"; then mount -t proc proc "$ROOTFS/proc"; mounted+=("$ROOTFS/proc"); fi
  if ! mountpoint -q "$ROOTFS/proc/cpuinfo"; then
    write_cpuinfo
    mount --bind "$ROOTFS/.endoedge-cpuinfo" "$ROOTFS/proc/cpuinfo"
    mounted+=("$ROOTFS/proc/cpuinfo")
  fi
  bind /sys /sys ro
  bind /dev /dev
  [[ -d /dev/pts ]] && bind /dev/pts /dev/pts
  if [[ -d $SHARED ]]; then bind "$SHARED" /work/shared ro; fi
}

# The environment inside: nothing of the host's (its pip settings point at x86 wheel folders).
GUEST_ENV=(env -i QEMU_CPU="$CPU" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
  TERM=dumb PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PIP_ROOT_USER_ACTION=ignore)
guest() {  # guest [-w DIR] CMD...: run CMD inside the arm64 root
  local dir=/
  if [[ $1 == -w ]]; then dir=$2; shift 2; fi
  if [[ $MODE == chroot ]]; then
    nice -n "$NICE" chroot "$ROOTFS" "${GUEST_ENV[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "$dir" "$@"
  else
    write_cpuinfo
    local binds=(-b /proc -b /sys -b /dev -b "$ROOTFS/.endoedge-cpuinfo:/proc/cpuinfo")
    [[ -d $SHARED ]] && binds+=(-b "$SHARED:/work/shared")
    nice -n "$NICE" proot -0 -q "$QEMU" -r "$ROOTFS" "${binds[@]}" -w "$dir" "${GUEST_ENV[@]}" "$@"
  fi
}

place_qemu() {
  # Without binfmt's F flag the kernel looks the interpreter up inside the chroot: put it there.
  install -D -m 0755 "$QEMU" "$ROOTFS/usr/bin/qemu-aarch64-static"
  # Debian's entry is a symlink named *-binfmt-P (qemu reads the preserved argv[0] from its own name).
  if [[ $MODE == chroot && -n $binfmt_interp && $binfmt_interp != /usr/bin/qemu-aarch64-static ]]; then
    mkdir -p "$ROOTFS$(dirname "$binfmt_interp")"
    if [[ -L $binfmt_interp ]]; then
      ln -sfn "$(readlink "$binfmt_interp")" "$ROOTFS$binfmt_interp"
    else
      install -m 0755 "$binfmt_interp" "$ROOTFS$binfmt_interp"
    fi
  fi
}

# --- 1. the arm64 root file system (cached) ----------------------------------------------------------------
# debootstrap makes the base system (its resolver does not follow alternatives such as dconf's
# "default-dbus-session-bus | dbus-session-bus", so the rest comes from apt inside, which does).
t_start=$(date +%s)
if [[ ! -f $ROOTFS/.endoedge-base || $(cat "$ROOTFS/.endoedge-base") != "$SUITE" ]]; then
  say "building the arm64 $SUITE base system in $ROOTFS (first run: several minutes)"
  grep -q " $ROOTFS/" /proc/mounts && die "something is still mounted under $ROOTFS: umount it first"
  [[ -d $ROOTFS ]] && rm -rf --one-file-system "$ROOTFS"
  mkdir -p "$ROOTFS"
  nice -n "$NICE" debootstrap --foreign --arch arm64 --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR"
  place_qemu
  mount_guest
  guest /debootstrap/debootstrap --second-stage
  echo "$SUITE" >"$ROOTFS/.endoedge-base"
fi
place_qemu
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
mount_guest
if [[ ! -f $ROOTFS/.endoedge-rootfs || $(cat "$ROOTFS/.endoedge-rootfs") != "$ROOT_STAMP" ]]; then
  say "installing ${ROOT_PACKAGES//,/ } in the arm64 root"
  guest /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends ${ROOT_PACKAGES//,/ } && apt-get clean && rm -rf /var/lib/apt/lists/*"
  echo "$ROOT_STAMP" >"$ROOTFS/.endoedge-rootfs"
fi
# Certificate authorities this host's administrator added (e.g. for a TLS-inspecting proxy in front of
# PyPI) go into the guest's store the same way, or pip inside cannot reach PyPI.
host_cas=(/usr/local/share/ca-certificates/*.crt)
if [[ -e ${host_cas[0]} ]]; then
  ca_stamp=$(cat "${host_cas[@]}" | sha256sum | cut -d' ' -f1)
  if [[ $(cat "$ROOTFS/.endoedge-host-cas" 2>/dev/null) != "$ca_stamp" ]]; then
    say "adding the host's local CA certificates to the guest's store"
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    cp "${host_cas[@]}" "$ROOTFS/usr/local/share/ca-certificates/"
    guest update-ca-certificates >/dev/null
    echo "$ca_stamp" >"$ROOTFS/.endoedge-host-cas"
  fi
fi
t_rootfs=$(($(date +%s) - t_start))
say "root file system ready (${t_rootfs}s): $(guest /usr/bin/python3 -c 'import platform; print(platform.machine(), platform.python_version())')"

# --- 2. the README's edge install and the project's own commands, inside ------------------------------------
# A fresh copy of the checkout's tracked files (as they are in the work tree), beside shared/.
OUT_GUEST=/work/out
OUT="$ROOTFS$OUT_GUEST"
rm -rf "$ROOTFS$GUEST_SRC" "$OUT"
mkdir -p "$ROOTFS$GUEST_SRC" "$OUT"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$ROOTFS$GUEST_SRC"
printf 'step\trc\tseconds\n' >"$OUT/steps.tsv"

step() {  # step NAME CMD...: run CMD in the checkout inside the root; log, exit code and wall time
  local name=$1 rc=0 t0 t1
  shift
  say "$name: $*"
  t0=$(date +%s.%N)
  guest -w "$GUEST_SRC" "$@" 2>&1 | tee "$OUT/$name.log" || rc=${PIPESTATUS[0]}
  t1=$(date +%s.%N)
  awk -v n="$name" -v rc="$rc" -v a="$t0" -v b="$t1" 'BEGIN { printf "%s\t%s\t%.1f\n", n, rc, b - a }' >>"$OUT/steps.tsv"
  return 0
}
ok() { awk -F'\t' -v s="$1" '$1 == s && $2 == 0 { found = 1 } END { exit !found }' "$OUT/steps.tsv"; }

t_guest=$(date +%s)
VENV=.venv-edge
PY=$VENV/bin/python
step system /bin/sh -c 'cat /etc/os-release; echo "debian_version=$(cat /etc/debian_version)"; uname -m;
  dpkg-query -W -f "\${Package} \${Version} \${Architecture}\n" libc6 python3 python3.11 python3-gi \
    python3-gst-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good systemd'
# The README's Jetson commands (Makefile's .venv-edge target, without -e: a user installs the package).
step venv /usr/bin/python3 -m venv --system-site-packages "$VENV"
ok venv && step pip-upgrade "$PY" -m pip install -q --upgrade pip
ok venv && step pip-install "$PY" -m pip install -c constraints.txt --report "$OUT_GUEST/pip-report.json" ".[edge]"
if ok pip-install; then
  step pip-freeze "$PY" -m pip list --format=freeze
  step pip-check "$PY" -m pip check
  step probe "$PY" benchmarks/arm64/probe.py "$BUNDLE" "$OUT_GUEST/probe.json"
  step bundle-verify "$VENV/bin/endoedge" bundle verify "$BUNDLE"
  limit=()
  [[ $PARITY_LIMIT -gt 0 ]] && limit=(--limit "$PARITY_LIMIT")
  step parity "$VENV/bin/endoedge" bench parity "$BUNDLE" --data "$DATA" --reference bundle "${limit[@]}" \
    --out "$OUT_GUEST/bench"
  step demo "$VENV/bin/endoedge" demo --quick --no-window --out "$OUT_GUEST/demo"
  # The same with LiteRT, the other CPU runtime a Jetson without TensorRT falls back to.
  step demo-tflite "$VENV/bin/endoedge" demo --quick --no-window --backend tflite --format tflite-fp32 \
    --out "$OUT_GUEST/demo-tflite"
  # `endoedge evaluate BUNDLE` (no TensorFlow) where this version has it; older ones evaluate runs only.
  guest -w "$GUEST_SRC" "$VENV/bin/endoedge" evaluate --help >"$OUT/evaluate-help.log" 2>&1 || true
  if grep -qi "bundle" "$OUT/evaluate-help.log"; then
    formats=()
    [[ $EVAL_FORMATS != all ]] && formats=(--formats "$EVAL_FORMATS")
    step evaluate "$VENV/bin/endoedge" evaluate "$BUNDLE" --data "$DATA" "${formats[@]}" -o "$OUT_GUEST/evaluate"
  fi
fi
# JetPack 6's Python 3.10 takes other pins from constraints.txt (numpy, ONNX Runtime) than Debian's 3.11.
# Check that pip finds binary wheels for all of them on cp310/aarch64 with Ubuntu 22.04's glibc (2.35),
# and run those versions here in a second venv (Debian's 3.11 interpreter, JetPack's library versions).
if [[ ${ARM64_JP6:-1} == 1 ]] && ok pip-install; then
  sed -e '/python_version >= "3.11"/d' -e 's/; *python_version < "3.11"//' constraints.txt \
    >"$OUT/constraints-py310.txt"
  if grep -q python_version "$OUT/constraints-py310.txt"; then
    die "constraints.txt has a python_version marker this script does not evaluate: update it"
  fi
  jp6_platforms=()
  for minor in 35 34 33 32 31 30 29 28 27 26 25 24 23 22 21 20 19 18 17; do
    jp6_platforms+=(--platform "manylinux_2_${minor}_aarch64")
  done
  step jp6-resolve /bin/sh -c 'rm -rf /tmp/jp6 && "$0" -m pip wheel -q --no-deps -w /tmp/jp6 . &&
    "$0" -m pip download --only-binary=:all: --python-version 3.10 --implementation cp --abi cp310 "$@" \
      -c /work/out/constraints-py310.txt -d /tmp/jp6 "$(ls /tmp/jp6/endoedge-*.whl)[edge]" &&
    echo "wheels for cp310/aarch64:" && ls /tmp/jp6 | sort' "$PY" "${jp6_platforms[@]}"
  step jp6-install /bin/sh -c "rm -rf .venv-jp6 && /usr/bin/python3 -m venv --system-site-packages .venv-jp6 &&
    .venv-jp6/bin/python -m pip install -q -c $OUT_GUEST/constraints-py310.txt '.[edge]'"
  if ok jp6-install; then
    step jp6-freeze .venv-jp6/bin/python -m pip list --format=freeze
    step jp6-parity .venv-jp6/bin/endoedge bench parity "$BUNDLE" --data "$DATA" --reference bundle "${limit[@]}" \
      --out "$OUT_GUEST/bench-jp6"
  fi
fi
# The systemd installer as a technician runs it (its own venv from PyPI), into a temporary root.
step install /bin/sh -c "rm -rf /tmp/endoedge-root && systemd/install.sh --prefix /tmp/endoedge-root"
if ok install; then
  step install-freeze /tmp/endoedge-root/opt/endoedge/venv/bin/python -m pip list --format=freeze
  # verify checks that ExecStart= binaries exist: point them at the staged venv, as tests/systemd does.
  step unit-verify /bin/sh -c 'sed "s|/opt/endoedge/venv|/tmp/endoedge-root/opt/endoedge/venv|g" \
      /tmp/endoedge-root/etc/systemd/system/endoedge.service >/tmp/endoedge.service &&
    systemd-analyze verify /tmp/endoedge.service && echo "systemd-analyze verify: no findings"'
  step unit-security systemd-analyze security --offline=yes --root=/tmp/endoedge-root \
    /etc/systemd/system/endoedge.service
fi
t_total=$(($(date +%s) - t_start))

# --- 3. the results ------------------------------------------------------------------------------------------
{
  echo "rootfs_seconds=$t_rootfs"
  echo "guest_seconds=$(($(date +%s) - t_guest))"
  echo "total_seconds=$t_total"
  echo "mode=$MODE"
  echo "cpu=$CPU"
  echo "qemu=$("$QEMU" --version | head -n 1)"
  echo "host=$(uname -srm); $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "host_cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
  echo "suite=$SUITE"
  echo "bundle=$BUNDLE"
  echo "bundle_sha=$(git log -1 --format='%h %cs' -- "$BUNDLE")"
  echo "commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+changes')"
  echo "date=$(date -u +%Y-%m-%d)"
} >"$OUT/run.env"
python3 benchmarks/arm64/report.py "$OUT" >"$OUT/RESULTS.md"
if [[ $RESULTS == - ]]; then cat "$OUT/RESULTS.md"; else cp "$OUT/RESULTS.md" "$RESULTS"; say "wrote $RESULTS"; fi
# bench parity exits 1 when an artifact misses its gate: a result to report, not a broken run.
failed=$(awk -F'\t' 'NR > 1 && $2 != 0 && !($1 ~ /parity$/ && $2 == 1) { print $1 }' "$OUT/steps.tsv")
[[ -z $failed ]] || die "failed steps: $failed (see $RESULTS and $OUT/*.log)"
