"""A style-shift dataset from Debian's icon themes: the same freedesktop icon names drawn by other designers.

Each theme draws the icons the freedesktop naming specification lists (edit-copy, go-next, folder-remote,
...) in its own style. This script collects, from the themes installed under /usr/share/icons, every icon
name that at least --min-themes themes draw, writes one 64 px PNG per theme and name to

    OUT/tree/<theme>/<context>/<name>.png

(the largest PNG of 48 px or more the theme ships; else its SVG, rasterised with rsvg-convert), and then
makes the manifest with mlkit's own data commands only:

    mlkit data from-folders OUT/tree --labels path+name --group-level 1 --min-label-count 20 \\
        --out OUT/manifest.csv
    mlkit data split OUT/manifest.csv --val 0.15 --test-where group=<test theme>

so an icon's labels are its context and the words of its name (actions/edit-copy.png gets
actions|edit|copy), the theme is the `group` column, the test split is one theme never trained on,
and train/val are stratified among the other themes. Symbolic (monochrome) icons, and the
right-to-left mirror image of an icon that is drawn too (go-next-rtl), are left out. An icon's
context is the one most themes file it under, so one name has one label set in every theme. Within
a theme, a file drawn under several names (aliases are symlinks) is kept once, under the name most
themes draw; files that link into another theme are that theme's drawing, not this one's, and are
left out. Mind that gnome, mate and Adwaita's legacy PNGs share much of their artwork (mate forked
GNOME 2's icons), so the test theme should be none of them.

With Debian 12's packages and the defaults (--min-themes 4, --min-label-count 20, test theme
oxygen): 3,229 icons from 10 themes, 81 labels (2.44 per icon), train 2,439, val 434, test 356.

Rerunning is cheap: PNGs already in the tree are kept, icons no longer selected are removed, and the
manifest and split are made again (the split is seeded, so the same tree gives the same manifest).

Debian packages (not CI: this is a benchmark):

    apt-get install --no-install-recommends librsvg2-bin oxygen-icon-theme mate-icon-theme \\
        breeze-icon-theme elementary-xfce-icon-theme numix-icon-theme faba-icon-theme \\
        gnome-icon-theme lxde-icon-theme tango-icon-theme adwaita-icon-theme

    python benchmarks/icon_themes.py --out /work/data/icons --test-theme oxygen
"""

import argparse
import configparser
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from mlkit.data import from_folders, read_manifest, split_manifest
from mlkit.files import atomic_path

ICONS = Path("/usr/share/icons")
# Theme folder -> package; dark variants and themes that only recolour another are left out.
THEMES = {
    "Adwaita": "adwaita-icon-theme", "Faba": "faba-icon-theme", "Numix": "numix-icon-theme",
    "Tango": "tango-icon-theme", "breeze": "breeze-icon-theme", "elementary-xfce": "elementary-xfce-icon-theme",
    "gnome": "gnome-icon-theme", "mate": "mate-icon-theme", "nuoveXT2": "lxde-icon-theme",
    "oxygen": "oxygen-icon-theme",
}
SIZE = 64
MIN_RASTER = 48
SOURCE_SUFFIXES = (".png", ".svg")
# go-next-rtl is go-next mirrored for right-to-left scripts: it looks like go-previous, so it would teach "next" wrong.
MIRRORED = "-rtl"


def theme_directories(theme_dir):
    """(folder, context, size, scale) for each icon folder the theme's index.theme lists."""
    index = configparser.ConfigParser(strict=False, interpolation=None)
    index.optionxform = str
    index.read(theme_dir / "index.theme", encoding="utf-8")
    listed = index.get("Icon Theme", "Directories", fallback="") + "," + index.get(
        "Icon Theme", "ScaledDirectories", fallback="")
    for folder in filter(None, (name.strip() for name in listed.split(","))):
        if index.has_section(folder) and index.has_option(folder, "Context"):
            section = index[folder]
            yield (theme_dir / folder, section["Context"].strip().lower(), int(section.get("Size", "0")),
                   int(section.get("Scale", "1")))


def theme_sources(theme_dir):
    """{name: (context, source file, its real path)}: the file to draw each icon from, per theme."""
    found = defaultdict(list)
    real_theme = theme_dir.resolve()
    for folder, context, size, scale in theme_directories(theme_dir):
        if scale != 1 or not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            path = Path(entry.path)
            if path.suffix not in SOURCE_SUFFIXES or "-symbolic" in path.stem:
                continue
            real = path.resolve()
            if real_theme not in real.parents or not real.is_file():
                continue
            raster = path.suffix == ".png"
            if raster and size < MIN_RASTER:
                continue
            # Largest PNG first, then the SVG drawn for the largest size.
            found[path.stem].append(((raster, size), context, path, real))
    return {name: max(options, key=lambda option: option[0])[1:] for name, options in found.items()}


def select_icons(sources, min_themes):
    """{(theme, name): (context, source)} for names at least `min_themes` themes draw, one name per file."""
    themes_per_name = Counter(name for icons in sources.values() for name in icons)
    for name in list(themes_per_name):
        if name.endswith(MIRRORED) and name[:-len(MIRRORED)] in themes_per_name:
            del themes_per_name[name]
    context_votes = defaultdict(Counter)
    for icons in sources.values():
        for name, (context, _, _) in icons.items():
            context_votes[name][context] += 1
    chosen = {}
    for theme, icons in sources.items():
        by_file = defaultdict(list)
        for name, (_, _, real) in icons.items():
            if themes_per_name.get(name, 0) >= min_themes:
                by_file[real].append(name)
        for names in by_file.values():
            name = min(names, key=lambda candidate: (-themes_per_name[candidate], candidate))
            chosen[theme, name] = (context_votes[name].most_common(1)[0][0], icons[name][1])
    return chosen


def render(source, target):
    """Writes `source` (PNG or SVG) to `target` as an RGBA PNG SIZE pixels wide, unless it is there."""
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        if source.suffix == ".svg":
            subprocess.run(["rsvg-convert", "-w", str(SIZE), "-h", str(SIZE), "-a", "-f", "png", "-o", str(tmp),
                            str(source)], check=True, capture_output=True)
        else:
            with Image.open(source) as image:
                image = image.convert("RGBA")
                if image.size != (SIZE, SIZE):
                    image = image.resize((SIZE, SIZE), Image.LANCZOS)
                image.save(tmp, format="PNG")
    return True


def write_tree(chosen, tree):
    """Renders every chosen icon into `tree` in parallel; removes the PNGs of icons no longer chosen."""
    targets = {tree / theme / context / f"{name}.png": source for (theme, name), (context, source) in chosen.items()}
    stale = [path for path in tree.rglob("*.png") if path not in targets] if tree.exists() else []
    for path in stale:
        path.unlink()
    failed = []

    def attempt(item):
        target, source = item
        try:
            return render(source, target)
        except (subprocess.CalledProcessError, OSError) as error:
            failed.append((source, error))
            return False

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        written = sum(pool.map(attempt, targets.items()))
    for source, error in failed:
        print(f"  could not render {source}: {error}", file=sys.stderr)
    print(f"tree {tree}: {len(targets) - len(failed)} icons ({written} rendered now, {len(stale)} stale removed)")


def print_stats(manifest_path, test_theme):
    manifest = read_manifest(manifest_path)
    rows = manifest.rows
    print(f"manifest {manifest_path}: {len(rows)} images, {len(manifest.label_names)} labels "
          f"(cardinality {rows['labels'].map(len).mean():.2f}); test theme: {test_theme}")
    table = rows.groupby(["group", "split"]).size().unstack(fill_value=0)
    print(table.to_string())
    print("splits:", rows["split"].value_counts().to_dict())
    counts = Counter(name for names in rows["labels"] for name in names)
    print("labels:", ", ".join(f"{name} {count}" for name, count in counts.most_common()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/work/data/icons"), help="default: /work/data/icons")
    parser.add_argument("--test-theme", default="oxygen", help="the theme never trained on (default: oxygen)")
    parser.add_argument("--min-themes", type=int, default=4,
                        help="keep icon names that at least this many themes draw (default: 4)")
    parser.add_argument("--min-label-count", type=int, default=20, help="default: 20")
    parser.add_argument("--val", type=float, default=0.15, help="of the training themes' icons (default: 0.15)")
    args = parser.parse_args(argv)
    if shutil.which("rsvg-convert") is None:
        parser.error("rsvg-convert is missing: apt-get install librsvg2-bin")
    installed = [theme for theme in THEMES if (ICONS / theme / "index.theme").is_file()]
    missing = [THEMES[theme] for theme in THEMES if theme not in installed]
    if missing:
        print("not installed (apt-get install " + " ".join(missing) + "); going on without them")
    if args.test_theme not in installed:
        parser.error(f"--test-theme {args.test_theme!r} is not installed; installed: {', '.join(installed)}")
    sources = {theme: theme_sources(ICONS / theme) for theme in installed}
    chosen = select_icons(sources, args.min_themes)
    write_tree(chosen, args.out / "tree")
    manifest = args.out / "manifest.csv"
    from_folders(args.out / "tree", manifest, labels="path+name", group_level=1,
                 min_label_count=args.min_label_count)
    split_manifest(manifest, val=args.val, test_where=f"group={args.test_theme}", seed=0)
    print_stats(manifest, args.test_theme)


if __name__ == "__main__":
    main()
