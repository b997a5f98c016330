#!/usr/bin/env bash
# Download and unpack the datasets used by the DeSTSeg kit (CVPR 2023, Sec. 4.1):
#   mvtec  MVTec AD  (mvtec_anomaly_detection.tar.xz, ~4.9 GB)  -> <dir>/mvtec/<category>/...
#   mvtec:<category>  one MVTec AD category, its own archive (mvtec:bottle ~150 MB instead of
#          4.9 GB) -> <dir>/mvtec/<category>/...; checked against the official file counts
#   dtd    Describable Textures Dataset (dtd-r1.0.1.tar.gz, ~600 MB) -> <dir>/dtd/images/<class>/
#   mtd    Magnetic Tile Defect (GitHub abin24/Magnetic-tile-defect-datasets.) -> <dir>/mtd/MT_*/
#
# Usage: bash data_download.sh {mvtec|mvtec:<category>|dtd|mtd|all}... [TARGET_DIR]
#   e.g. bash data_download.sh mvtec:bottle dtd ~/data
#   TARGET_DIR defaults to $DESTSEG_DATA, else ./data.
#
# Every archive is checked against a SHA-256 before use. Downloads resume (curl -C -
# into <file>.part, renamed only after verification); a partial file that cannot be
# resumed (stale, from another URL, or larger than the file) is discarded and the
# download restarted. A finished dataset gets a <dir>/<name>/.done marker and is skipped
# on later runs. An archive that does not open is moved aside (<file>.bad-<time>) so the
# next run fetches it again. Sources without a published hash (MTD, the per-category MVTec
# archives): the hash of the first good download is recorded in <dir>/.<name>.sha256 and later
# downloads must match it. A per-category MVTec archive must also hold the category's official
# numbers of train images, test images and ground-truth masks (bottle: 209 / 83 / 63), or
# nothing is installed.
# Archive members that would land outside the target (absolute paths, "..", links
# pointing outside, devices) make the script refuse the whole archive before anything
# is extracted.
#
# Environment overrides (the tests use file:// URLs):
#   DESTSEG_{MVTEC,DTD,MTD}_URL      download URL
#   DESTSEG_{MVTEC,DTD,MTD}_SHA256   expected SHA-256; "" = none published (then the first
#                                    good download's hash is recorded and enforced)
#   DESTSEG_MVTEC_<CATEGORY>_URL, DESTSEG_MVTEC_<CATEGORY>_SHA256   the same for one category
#                                    (e.g. DESTSEG_MVTEC_METAL_NUT_URL)
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

# The 15 MVTec AD categories, each also published as its own archive (the links of the dataset's
# download page; pill is served from another share).  No per-category hash is published.
MYDRIVE=https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download
declare -A MVTEC_CATEGORY_URLS=(
    [bottle]=$MYDRIVE/420937370-1629951468/bottle.tar.xz
    [cable]=$MYDRIVE/420937413-1629951498/cable.tar.xz
    [capsule]=$MYDRIVE/420937454-1629951595/capsule.tar.xz
    [carpet]=$MYDRIVE/420937484-1629951672/carpet.tar.xz
    [grid]=$MYDRIVE/420937487-1629951814/grid.tar.xz
    [hazelnut]=$MYDRIVE/420937545-1629951845/hazelnut.tar.xz
    [leather]=$MYDRIVE/420937607-1629951964/leather.tar.xz
    [metal_nut]=$MYDRIVE/420937637-1629952063/metal_nut.tar.xz
    [pill]=https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/420938129-1629953099/pill.tar.xz
    [screw]=$MYDRIVE/420938130-1629953152/screw.tar.xz
    [tile]=$MYDRIVE/420938133-1629953189/tile.tar.xz
    [toothbrush]=$MYDRIVE/420938134-1629953256/toothbrush.tar.xz
    [transistor]=$MYDRIVE/420938166-1629953277/transistor.tar.xz
    [wood]=$MYDRIVE/420938383-1629953354/wood.tar.xz
    [zipper]=$MYDRIVE/420938385-1629953449/zipper.tar.xz
)
# Official file counts (MVTec AD paper, Table 1): train/good images, test images (good +
# defective), ground-truth masks (one per defective test image).  Sums: 3,629 / 1,725 / 1,258.
declare -A MVTEC_COUNTS=(
    [bottle]="209 83 63"      [cable]="224 150 92"      [capsule]="219 132 109"
    [carpet]="280 117 89"     [grid]="264 78 57"        [hazelnut]="391 110 70"
    [leather]="245 124 92"    [metal_nut]="220 115 93"  [pill]="267 167 141"
    [screw]="320 160 119"     [tile]="230 117 84"       [toothbrush]="60 42 30"
    [transistor]="213 100 40" [wood]="247 79 60"        [zipper]="240 151 119"
)

PYTHON="${DESTSEG_PYTHON:-$(command -v python3 || command -v python || true)}"

usage() {
    awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'
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

# verify FILE EXPECTED NAME [RECORD] -> 0 if ok (or no hash known yet), 1 on mismatch.
# RECORD: the file the expected hash was read from (trust-on-first-use), for the messages.
verify() {
    local file=$1 want=$2 name=$3 record=${4:-} got
    echo "$name: computing SHA-256 of $(basename "$file") ..."
    got=$(sha256_of "$file")
    if [[ -z "$want" ]]; then
        local var="DESTSEG_${name^^}"; var="${var//:/_}_SHA256"  # mvtec:metal_nut -> DESTSEG_MVTEC_METAL_NUT_SHA256
        echo "WARNING: $name: no published SHA-256, cannot verify this first download." >&2
        echo "WARNING: $name: computed sha256 = $got" >&2
        echo "WARNING: it is recorded once the archive extracts, and later downloads must match it (or export $var=<hash>)." >&2
        return 0
    fi
    if [[ "${got,,}" != "${want,,}" ]]; then
        echo "data_download.sh: error: $name: SHA-256 mismatch for $file" >&2
        if [[ -n "$record" ]]; then
            echo "  expected $want (recorded from the first good download in $record)" >&2
        else
            echo "  expected $want" >&2
        fi
        echo "  got      $got" >&2
        return 1
    fi
    echo "$name: SHA-256 ok ($got)"
}

# safe_extract ARCHIVE DEST: refuse unsafe members, then extract (tar.* or zip).
# Exit status: 0 ok; 1 unsafe members refused; 3 the archive does not open or is corrupt
# (truncated, not an archive, an HTML page); 4 writing the files failed (disk full ...).
safe_extract() {
    "$PYTHON" - "$1" "$2" <<'PY'
import errno, os, posixpath, stat, sys, tarfile, zipfile, zlib

archive, dest = sys.argv[1], sys.argv[2]

def escapes(name, base="."):
    """True if `name` (relative to folder `base` inside the archive) leaves the archive root."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    if ".." in name.replace("\\", "/").split("/"):
        return True
    return posixpath.normpath(posixpath.join(base, name)).startswith("..")

def corrupt(why):
    with open(archive, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"{")):
        why = "the server sent a web page or an error message, not the archive"
    print(f"{os.path.basename(archive)} does not open as an archive ({why})", file=sys.stderr)
    sys.exit(3)

def extract():
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
        return
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError as e:
        corrupt(f"neither a zip nor a tar archive: {e}")
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

try:
    import lzma
    archive_errors = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
                      lzma.LZMAError, EOFError, NotImplementedError)
except ImportError:
    archive_errors = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)
try:
    extract()
except archive_errors as e:
    corrupt(f"{type(e).__name__}: {e}")
except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM):
        print(f"cannot write the extracted files: {e}", file=sys.stderr)
        sys.exit(4)
    corrupt(f"{type(e).__name__}: {e}")
PY
}

# check_mvtec_counts CATEGORY FOLDER -> 0 if FOLDER holds the category's official numbers of
# train images, test images and ground-truth masks; else prints what differs and returns 1.
check_mvtec_counts() {
    local category=$1 folder=$2 want got
    want=${MVTEC_COUNTS[$category]}
    got="$(find "$folder/train/good" -maxdepth 1 -type f -name '*.png' 2>/dev/null | wc -l | tr -d ' ')"
    got+=" $(find "$folder/test" -mindepth 2 -maxdepth 2 -type f -name '*.png' 2>/dev/null | wc -l | tr -d ' ')"
    got+=" $(find "$folder/ground_truth" -mindepth 2 -maxdepth 2 -type f -name '*.png' 2>/dev/null | wc -l | tr -d ' ')"
    if [[ "$got" == "$want" ]]; then
        echo "mvtec:$category: file counts ok (train / test / masks: ${got// / \/ })"
        return 0
    fi
    echo "data_download.sh: error: mvtec:$category: the archive holds train / test / masks = ${got// / \/ } PNG files, the official counts are ${want// / \/ }" >&2
    return 1
}

# download NAME URL PART -> 0 ok; 1 the partial file cannot be resumed (server refuses the
# range: stale or larger than the file); 2 other failure (network ...: keep PART, resume later)
download() {
    local name=$1 url=$2 part=$3 code rc=0
    code=$(curl -fL --retry 3 --progress-bar -C - -w '%{http_code}' -o "$part" "$url") || rc=$?
    if (( rc == 0 )); then return 0; fi
    echo "$name: curl failed (exit $rc${code:+, HTTP $code})" >&2
    if (( rc == 33 || rc == 36 )) || [[ $rc == 22 && "$code" == 416 ]]; then return 1; fi
    return 2
}

# fetch NAME URL SHA256 FILE [DEST [CATEGORY]]
#   FILE: local archive name, fixed so resuming survives URL changes; DEST: where it goes
#   (default <target>/NAME); CATEGORY: an MVTec category whose file counts the archive must hold.
fetch() {
    local name=$1 url=$2 sha=$3 file=$4 dest=${5:-$TARGET/$1} category=${6:-}
    local marker="$dest/.done" env_name=${name^^}
    local dl="$TARGET/.downloads" ; local archive="$dl/$file" part="$dl/$file.part"
    local staging="$TARGET/.$name.staging" record="$TARGET/.$name.sha256" recorded=""
    [[ -n "$category" ]] && name="mvtec:$category"  # as the user typed it, in messages

    if [[ -f "$marker" ]]; then
        echo "$name: already done in $dest (remove $marker to redo); nothing to do."
        return 0
    fi
    if [[ -n "$category" && -f "$TARGET/mvtec/.done" ]]; then
        echo "$name: already in $dest (from the whole MVTec AD archive); nothing to do."
        return 0
    fi
    if [[ -e "$dest" ]]; then
        if [[ -z "$category" && -d "$dest" ]] && compgen -G "$dest/*/.done" >/dev/null; then
            die "$name: $dest holds categories downloaded one by one ($(cd "$dest" && ls -d */.done | sed 's#/.done##' | tr '\n' ' ')). Download the others the same way (mvtec:<category>), or move $dest aside to fetch the whole archive."
        fi
        die "$name: $dest exists but was not completed by this script (no $marker). Move or delete it, or choose another target folder."
    fi
    mkdir -p "$dl"
    if [[ -z "$sha" && -s "$record" ]]; then  # no published hash: the first good download's
        sha=$(head -n1 "$record" | cut -d' ' -f1); recorded=$record
        echo "$name: no published SHA-256; checking against the hash recorded at the first download ($record)"
    fi
    local mismatch_hint="The file is corrupt or changed upstream; run again to retry, or set DESTSEG_${env_name}_SHA256 if you trust the new file."
    if [[ -n "$recorded" ]]; then
        mismatch_hint="The file is corrupt or changed upstream; run again to retry, or, if upstream really changed it, delete $record to accept the new file."
    fi

    if [[ -f "$archive" ]]; then
        echo "$name: reusing downloaded $archive"
        if ! verify "$archive" "$sha" "$name" "$recorded"; then
            rm -f "$archive"; die "$name: deleted the corrupt $archive. $mismatch_hint"
        fi
    else
        # a partial file from another URL is stale: start afresh
        if [[ -s "$part" && -f "$part.url" && "$(cat "$part.url")" != "$url" ]]; then
            echo "$name: discarding the partial download $part: it came from another URL ($(cat "$part.url"))" >&2
            rm -f "$part"
        fi
        printf '%s\n' "$url" >"$part.url"
        local attempt resumed rc
        for attempt in 1 2; do
            resumed=0
            if [[ -s "$part" ]]; then
                resumed=1
                echo "$name: resuming download of $url from byte $(wc -c <"$part" | tr -d ' ')"
            else
                echo "$name: downloading $url"
            fi
            rc=0; download "$name" "$url" "$part" || rc=$?
            if (( rc == 1 )) && [[ -n "$sha" && -s "$part" && "$(sha256_of "$part")" == "${sha,,}" ]]; then
                rc=0  # a complete .part makes some servers answer "range not satisfiable": it verifies
            fi
            if (( rc == 1 && resumed && attempt == 1 )); then
                echo "$name: the partial file $part ($(wc -c <"$part" | tr -d ' ') bytes) cannot be resumed (stale, or larger than the file on the server): discarded it, downloading again from the start" >&2
                rm -f "$part"; continue
            fi
            if (( rc != 0 )); then
                if (( rc == 1 )); then rm -f "$part"; fi
                if [[ -s "$part" ]]; then
                    die "$name: download from $url failed; run the script again to resume (partial file: $part)."
                fi
                die "$name: download from $url failed; check the URL and your connection, then run the script again."
            fi
            if verify "$part" "$sha" "$name" "$recorded"; then break; fi
            if (( resumed && attempt == 1 )); then
                echo "$name: the resumed download does not match: the partial file was stale; discarded it, downloading again from the start" >&2
                rm -f "$part"; continue
            fi
            rm -f "$part" "$part.url"
            die "$name: deleted the bad download. $mismatch_hint"
        done
        mv -f "$part" "$archive"
        rm -f "$part.url"
    fi

    echo "$name: checking archive members and extracting ..."
    rm -rf "$staging"; mkdir -p "$staging"
    local xrc=0
    safe_extract "$archive" "$staging" || xrc=$?
    if (( xrc != 0 )); then
        rm -rf "$staging"
        if (( xrc == 3 )); then
            local aside
            aside="$archive.bad-$(date -u +%Y%m%dT%H%M%SZ)"
            mv -f "$archive" "$aside"
            die "$name: the downloaded archive is damaged or not an archive (see above): moved it aside to $aside; run the script again to download it afresh (and delete $aside)."
        fi
        die "$name: refused or failed to extract $archive (nothing was installed in $dest)."
    fi
    # an archive with one top-level folder (dtd/, Magnetic-...-master/) is unwrapped
    local entries=() src="$staging" got
    mapfile -t entries < <(find "$staging" -mindepth 1 -maxdepth 1)
    if [[ ${#entries[@]} -eq 1 && -d "${entries[0]}" ]]; then src="${entries[0]}"; fi
    if [[ -n "$category" ]] && ! check_mvtec_counts "$category" "$src"; then
        rm -rf "$staging"
        local aside
        aside="$archive.bad-$(date -u +%Y%m%dT%H%M%SZ)"
        mv -f "$archive" "$aside"
        die "$name: the archive is incomplete or not this category (nothing was installed in $dest; its hash was not recorded): moved it aside to $aside; run the script again to download it afresh."
    fi
    mkdir -p "$(dirname "$dest")"
    mv "$src" "$dest"
    rm -rf "$staging"
    got=$(sha256_of "$archive")
    printf 'url=%s\nsha256=%s\ndate=%s\n' "$url" "$got" "$(date -u +%FT%TZ)" >"$marker"
    if [[ -z "$sha" ]]; then  # first good download of a source without a published hash
        printf '%s  %s\n' "$got" "$file" >"$record"
        echo "$name: recorded its SHA-256 in $record; later downloads must match it."
    fi
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
        mvtec:*) [[ -n "${MVTEC_CATEGORY_URLS[${arg#mvtec:}]:-}" ]] \
                   || die "unknown MVTec AD category '${arg#mvtec:}' in $arg; the categories are: $(printf '%s\n' "${!MVTEC_CATEGORY_URLS[@]}" | sort | tr '\n' ' ')"
                 datasets+=("$arg") ;;
        -*) die "unknown option $arg (see --help)" ;;
        *) [[ -z "$target" ]] || die "more than one target folder given ($target, $arg); datasets are mvtec, mvtec:<category>, dtd, mtd, all."
           target=$arg ;;
    esac
done
if [[ ${#datasets[@]} -eq 0 ]]; then
    usage >&2; die "name at least one dataset: mvtec, mvtec:<category>, dtd, mtd or all."
fi
command -v curl >/dev/null || die "curl is required; install it (e.g. apt-get install curl)."
[[ -n "$PYTHON" ]] || die "python3 is required to check and extract archives; install it or set DESTSEG_PYTHON."
TARGET="${target:-${DESTSEG_DATA:-./data}}"
why=$(mkdir -p "$TARGET" 2>&1) || die "cannot create the target folder $TARGET (${why##*: }): pass a folder where you may write, e.g. bash data_download.sh ${datasets[0]} ~/data"
[[ -w "$TARGET" ]] || die "the target folder $TARGET is not writable: pass a folder where you may write, e.g. bash data_download.sh ${datasets[0]} ~/data"
TARGET=$(cd "$TARGET" && pwd)

declare -A seen=()
for ds in "${datasets[@]}"; do
    [[ -n "${seen[$ds]:-}" ]] && continue
    seen[$ds]=1
    case "$ds" in
        mvtec) fetch mvtec "$MVTEC_URL" "$MVTEC_SHA256" mvtec_anomaly_detection.tar.xz ;;
        dtd)   fetch dtd "$DTD_URL" "$DTD_SHA256" dtd-r1.0.1.tar.gz ;;
        mtd)   fetch mtd "$MTD_URL" "$MTD_SHA256" Magnetic-tile-defect-datasets-master.zip ;;
        mvtec:*)
            category=${ds#mvtec:}; var=DESTSEG_MVTEC_${category^^}
            url_var=${var}_URL; sha_var=${var}_SHA256
            fetch "mvtec_$category" "${!url_var:-${MVTEC_CATEGORY_URLS[$category]}}" "${!sha_var:-}" \
                "$category.tar.xz" "$TARGET/mvtec/$category" "$category" ;;
    esac
done
rmdir "$TARGET/.downloads" 2>/dev/null || true

echo
echo "Data is in $TARGET:"
if [[ -f "$TARGET/mvtec/.done" ]] || compgen -G "$TARGET/mvtec/*/.done" >/dev/null; then
    echo "  MVTec AD: $TARGET/mvtec/<category>/{train,test,ground_truth}"
fi
[[ -f "$TARGET/dtd/.done" ]] && echo "  DTD:      $TARGET/dtd/images/<class>/*.jpg"
[[ -f "$TARGET/mtd/.done" ]] && echo "  MTD:      $TARGET/mtd/MT_*/Imgs/"
echo "Point the kit at it with"
echo "  export DESTSEG_DATA=$TARGET"
echo "or pass --data-root $TARGET on the command line."
