#!/usr/bin/env bash
# Download and unpack the datasets used by the DeSTSeg kit (CVPR 2023, Sec. 4.1):
#   mvtec  MVTec AD  (mvtec_anomaly_detection.tar.xz, ~4.9 GB)  -> <dir>/mvtec/<category>/...
#   dtd    Describable Textures Dataset (dtd-r1.0.1.tar.gz, ~600 MB) -> <dir>/dtd/images/<class>/
#   mtd    Magnetic Tile Defect (GitHub abin24/Magnetic-tile-defect-datasets.) -> <dir>/mtd/MT_*/
#
# Usage: bash data_download.sh {mvtec|dtd|mtd|all}... [TARGET_DIR]
#   TARGET_DIR defaults to $DESTSEG_DATA, else ./data.
#
# Every archive is checked against a SHA-256 before use. Downloads resume (curl -C -
# into <file>.part, renamed only after verification); a finished dataset gets a
# <dir>/<name>/.done marker and is skipped on later runs. Archive members that would
# land outside the target (absolute paths, "..", links pointing outside, devices) make
# the script refuse the whole archive before anything is extracted.
#
# Environment overrides (the tests use file:// URLs):
#   DESTSEG_{MVTEC,DTD,MTD}_URL      download URL
#   DESTSEG_{MVTEC,DTD,MTD}_SHA256   expected SHA-256; set to "" to skip the check
#                                    (the computed hash is printed so you can record it)
#   DESTSEG_KEEP_ARCHIVES=1          keep the downloaded archives after extraction
#   DESTSEG_PYTHON                   python used to list/extract archives (default python3)
set -euo pipefail

# MVTec AD: official URL; SHA-256 as published in anomalib
# (src/anomalib/data/datamodules/image/mvtecad.py, DOWNLOAD_INFO.hashsum).
MVTEC_URL="${DESTSEG_MVTEC_URL-https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/mvtec_anomaly_detection.tar.xz}"
MVTEC_SHA256="${DESTSEG_MVTEC_SHA256-cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d}"
# DTD r1.0.1: official URL; SHA-256 as published in anomalib (models/image/draem, DTD_DOWNLOAD_INFO).
DTD_URL="${DESTSEG_DTD_URL-https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz}"
DTD_SHA256="${DESTSEG_DTD_SHA256-e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205}"
# MTD: GitHub's zip of the master branch. No published hash exists and GitHub may
# regenerate archive bytes, so none is recorded: the computed hash is printed instead.
MTD_URL="${DESTSEG_MTD_URL-https://github.com/abin24/Magnetic-tile-defect-datasets./archive/refs/heads/master.zip}"
MTD_SHA256="${DESTSEG_MTD_SHA256-}"

PYTHON="${DESTSEG_PYTHON:-$(command -v python3 || command -v python || true)}"

usage() {
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
}
die() { echo "data_download.sh: error: $*" >&2; exit 1; }

sha256_of() {
    if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null; then shasum -a 256 "$1" | cut -d' ' -f1
    else "$PYTHON" -c 'import hashlib,sys;h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

# verify FILE EXPECTED NAME -> 0 if ok (or no hash recorded), 1 on mismatch
verify() {
    local file=$1 want=$2 name=$3 got
    echo "$name: computing SHA-256 of $(basename "$file") ..."
    got=$(sha256_of "$file")
    if [[ -z "$want" ]]; then
        local var="DESTSEG_${name^^}_SHA256"
        echo "WARNING: $name: no SHA-256 recorded, cannot verify the download." >&2
        echo "WARNING: $name: computed sha256 = $got" >&2
        echo "WARNING: record it (export $var=$got) so future downloads are checked." >&2
        return 0
    fi
    if [[ "${got,,}" != "${want,,}" ]]; then
        echo "data_download.sh: error: $name: SHA-256 mismatch for $file" >&2
        echo "  expected $want" >&2
        echo "  got      $got" >&2
        return 1
    fi
    echo "$name: SHA-256 ok ($got)"
}

# safe_extract ARCHIVE DEST: refuse unsafe members, then extract (tar.* or zip).
safe_extract() {
    "$PYTHON" - "$1" "$2" <<'PY'
import os, posixpath, stat, sys, tarfile, zipfile

archive, dest = sys.argv[1], sys.argv[2]

def escapes(name, base="."):
    """True if `name` (relative to folder `base` inside the archive) leaves the archive root."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    if ".." in name.replace("\\", "/").split("/"):
        return True
    return posixpath.normpath(posixpath.join(base, name)).startswith("..")

bad = []
if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for i in infos:
            mode = i.external_attr >> 16
            if escapes(i.filename):
                bad.append(f"{i.filename} (path leaves the target folder)")
            elif stat.S_ISLNK(mode):
                target = zf.read(i).decode("utf-8", "replace")
                if escapes(target, posixpath.dirname(i.filename)):
                    bad.append(f"{i.filename} -> {target} (link points outside)")
        if bad:
            sys.exit("refusing unsafe archive members:\n  " + "\n  ".join(bad))
        for i in infos:
            if not stat.S_ISLNK(i.external_attr >> 16):
                zf.extract(i, dest)
else:
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError as e:
        sys.exit(f"{archive} is neither a zip nor a tar archive ({e})")
    with tf:
        members = tf.getmembers()
        for m in members:
            if escapes(m.name):
                bad.append(f"{m.name} (path leaves the target folder)")
            elif m.issym() and escapes(m.linkname, posixpath.dirname(m.name)):
                bad.append(f"{m.name} -> {m.linkname} (symlink points outside)")
            elif m.islnk() and escapes(m.linkname):
                bad.append(f"{m.name} -> {m.linkname} (hard link points outside)")
            elif not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                bad.append(f"{m.name} (device/fifo member)")
        if bad:
            sys.exit("refusing unsafe archive members:\n  " + "\n  ".join(bad))
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:
            tf.extractall(dest, members=members)
PY
}

# fetch NAME URL SHA256 FILE  (FILE: local archive name, fixed so resuming survives URL changes)
fetch() {
    local name=$1 url=$2 sha=$3 file=$4
    local dest="$TARGET/$name" marker="$TARGET/$name/.done"
    local dl="$TARGET/.downloads" ; local archive="$dl/$file" part="$dl/$file.part"
    local staging="$TARGET/.$name.staging"

    if [[ -f "$marker" ]]; then
        echo "$name: already done in $dest (remove $marker to redo); nothing to do."
        return 0
    fi
    if [[ -e "$dest" ]]; then
        die "$name: $dest exists but was not completed by this script (no $marker). Move or delete it, or choose another target folder."
    fi
    mkdir -p "$dl"

    if [[ -f "$archive" ]]; then
        echo "$name: reusing downloaded $archive"
        if ! verify "$archive" "$sha" "$name"; then
            rm -f "$archive"; die "$name: deleted the corrupt $archive; run the script again to re-download."
        fi
    else
        if [[ -s "$part" ]]; then
            echo "$name: resuming download of $url from byte $(wc -c <"$part" | tr -d ' ')"
        else
            echo "$name: downloading $url"
        fi
        if ! curl -fL --retry 3 --progress-bar -C - -o "$part" "$url"; then
            # a complete .part makes some servers answer "range not satisfiable": accept it if it verifies
            if [[ -z "$sha" || ! -s "$part" ]] || [[ "$(sha256_of "$part")" != "${sha,,}" ]]; then
                die "$name: download from $url failed; run the script again to resume (partial file: $part)."
            fi
        fi
        if ! verify "$part" "$sha" "$name"; then
            rm -f "$part"
            die "$name: deleted the bad download. The file is corrupt or changed upstream; run again to retry, or set DESTSEG_${name^^}_SHA256 if you trust the new file."
        fi
        mv -f "$part" "$archive"
    fi

    echo "$name: checking archive members and extracting ..."
    rm -rf "$staging"; mkdir -p "$staging"
    if ! safe_extract "$archive" "$staging"; then
        rm -rf "$staging"
        die "$name: refused or failed to extract $archive (nothing was installed in $dest)."
    fi
    # an archive with one top-level folder (dtd/, Magnetic-...-master/) is unwrapped
    local entries=() src="$staging"
    mapfile -t entries < <(find "$staging" -mindepth 1 -maxdepth 1)
    if [[ ${#entries[@]} -eq 1 && -d "${entries[0]}" ]]; then src="${entries[0]}"; fi
    mv "$src" "$dest"
    rm -rf "$staging"
    printf 'url=%s\nsha256=%s\ndate=%s\n' "$url" "$(sha256_of "$archive")" "$(date -u +%FT%TZ)" >"$marker"
    if [[ "${DESTSEG_KEEP_ARCHIVES:-0}" != 1 ]]; then rm -f "$archive"; fi
    echo "$name: done -> $dest"
}

# ---------------------------------------------------------------- arguments
datasets=() target=""
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        all) datasets+=(mvtec dtd mtd) ;;
        mvtec|dtd|mtd) datasets+=("$arg") ;;
        -*) die "unknown option $arg (see --help)" ;;
        *) [[ -z "$target" ]] || die "more than one target folder given ($target, $arg); datasets are mvtec, dtd, mtd, all."
           target=$arg ;;
    esac
done
if [[ ${#datasets[@]} -eq 0 ]]; then
    usage >&2; die "name at least one dataset: mvtec, dtd, mtd or all."
fi
command -v curl >/dev/null || die "curl is required; install it (e.g. apt-get install curl)."
[[ -n "$PYTHON" ]] || die "python3 is required to check and extract archives; install it or set DESTSEG_PYTHON."
TARGET="${target:-${DESTSEG_DATA:-./data}}"
mkdir -p "$TARGET"
TARGET=$(cd "$TARGET" && pwd)

declare -A seen=()
for ds in "${datasets[@]}"; do
    [[ -n "${seen[$ds]:-}" ]] && continue
    seen[$ds]=1
    case "$ds" in
        mvtec) fetch mvtec "$MVTEC_URL" "$MVTEC_SHA256" mvtec_anomaly_detection.tar.xz ;;
        dtd)   fetch dtd "$DTD_URL" "$DTD_SHA256" dtd-r1.0.1.tar.gz ;;
        mtd)   fetch mtd "$MTD_URL" "$MTD_SHA256" Magnetic-tile-defect-datasets-master.zip ;;
    esac
done
rmdir "$TARGET/.downloads" 2>/dev/null || true

echo
echo "Data is in $TARGET:"
[[ -f "$TARGET/mvtec/.done" ]] && echo "  MVTec AD: $TARGET/mvtec/<category>/{train,test,ground_truth}"
[[ -f "$TARGET/dtd/.done" ]] && echo "  DTD:      $TARGET/dtd/images/<class>/*.jpg"
[[ -f "$TARGET/mtd/.done" ]] && echo "  MTD:      $TARGET/mtd/MT_*/Imgs/"
echo "Point the kit at it with"
echo "  export DESTSEG_DATA=$TARGET"
echo "or pass --data-root $TARGET on the command line."
