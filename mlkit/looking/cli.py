"""`mlkit crop` and `mlkit look`: thin parsers over `mlkit.crop` and `mlkit.look`."""

import argparse
from dataclasses import fields

from mlkit.cropping.config import LOOK_METHOD, CropConfig
from mlkit.cropping.finder import METHODS
from mlkit.options import add_options, option_fields

CROP_EPILOG = """\
examples:
  mlkit crop data/manifest.csv --out data/cropped                   # auto: plain or photographed backgrounds
  mlkit crop data/manifest.csv --out data/early --method sokolova   # the early layers' peaks
  mlkit crop data/manifest.csv --out data/square --aspect square --margin 0.1
  mlkit crop data/manifest.csv --out data/tuned --model RUN     # the fine-tuned model's first layers

Writes DIR/images/ (the crops, PNG), DIR/manifest.csv (every column carried
over; image points at the crop; crop_source and crop_box added), DIR/failed.csv
(rows that could not be read, with the reason), DIR/contact_sheet.png
(originals with their boxes) and DIR/crop.json (the settings). Rerunning with
the same settings resumes; other settings crop again. A model fine-tuned on a
cache of DIR/manifest.csv records the settings, and `mlkit predict` crops its
images the same way.

which method: auto (the default) finds the box best on both plain and photographed
backgrounds (BENCHMARKS.md: mean IoU 0.99 on white and 0.63 on photographs,
against sokolova's 0.90 and 0.26 and border's 0.82 and 0.56) at about 3
forward passes an image; like border it assumes the object lies inside the
frame, not across its border. sokolova maps where the first layers respond
(what `mlkit look` draws by default; on a plain background auto uses
no network, so --model changes nothing there); border, one feature map and no colour
refinement, is kept so that crops made with it replay.
"""

LOOK_EPILOG = """\
examples:
  mlkit look RUN photos/ --out look/
  mlkit look models/RUN.keras data/manifest.csv --out look/ --compare imagenet

Writes one PNG grid per image to DIR: the image (with its caption for a caption
model), the crop method's map (--method) and the crop box, and a Grad-CAM map on
the last convolutional block for each of the top decided labels. --compare adds
the same maps from the backbone before fine-tuning: 'imagenet', a weights file,
a bottleneck cache (.h5) or another run.
"""

# The crop settings that shape look's early-layer map and box; the networks and their size come from the model.
LOOK_SETTINGS = [field.name for field in option_fields(CropConfig)
                 if field.name not in ("backbone", "weights", "model", "image_size", "background")]
# look draws the first layers' map unless told (LOOK_METHOD): its own --method, with its own default.
LOOK_OPTIONS = [name for name in LOOK_SETTINGS if name != "method"]


def register(subparsers):
    parser = subparsers.add_parser(
        "crop", help="crop every image of a manifest to its object, as a backbone's feature maps find it",
        description="Content-aware crops. --method sokolova (Sokolova 2019's auto-crop): the first "
        "layers' activation maps, each centred on its median and scaled by itself, low-variance maps dropped, "
        "summed; the box spans the peaks. --method border (a boundary prior): each cell of a stride-4 feature "
        "map scored by its Mahalanobis distance to the cells of the image's border ring; the box holds the "
        "region around the highest. --method auto decides per image: on a plain border (90% of its "
        "pixels within half of --tolerance of one colour) the box of the pixels that differ from that colour; "
        "otherwise a learned objectness map (a small head over MobileNetV2's ImageNet feature maps, shipped "
        "with mlkit; --photo-map border, or another backbone, takes border's distance on two stacked maps), the "
        "region of most mass, its edges refined in Lab colour against a band of pixels around it. auto is the "
        "most accurate on both plain and photographed backgrounds.",
        epilog=CROP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", help="manifest CSV or JSON Lines")
    parser.add_argument("--out", required=True, help="output folder (created; a rerun resumes there)")
    parser.add_argument("--workdir", default=".", help="workspace whose models/ --model names are looked up in "
                        "(default: .)")
    add_options(parser, CropConfig)
    parser.set_defaults(func=run_crop)

    look = subparsers.add_parser(
        "look", help="draw where a model looks: early-layer maps and Grad-CAM, before and after fine-tuning",
        description="For each image, a PNG grid: the crop method's map with its crop box and a "
        "Grad-CAM map on the last convolutional block for each of the top decided labels.",
        epilog=LOOK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    look.add_argument("model", help="a run name under WORKDIR/models/ or a .keras file")
    look.add_argument("images", nargs="+", help="image files, folders or a manifest")
    look.add_argument("--out", required=True, help="folder for the PNG grids")
    look.add_argument("--workdir", default=".", help="workspace (default: .)")
    look.add_argument("--compare", metavar="CACHE_OR_RUN", help="also draw the maps of the backbone before "
                      "fine-tuning: imagenet, a weights file, a cache (.h5) or another run")
    look.add_argument("--top", type=int, default=3, help="Grad-CAM maps for this many of the top labels (default 3)")
    look.add_argument("--caption", help="for a caption model: the caption of every image")
    look.add_argument("--method", default=LOOK_METHOD, choices=METHODS,
                      help="the early map drawn and its crop box: sokolova (where the first layers respond, "
                      "which fine-tuning changes), border or auto (mlkit crop's methods) (default sokolova)")
    add_options(look, CropConfig, LOOK_OPTIONS)
    look.set_defaults(func=run_look)


def run_crop(args):
    from mlkit.looking.crop import crop

    settings = {field.name: getattr(args, field.name) for field in fields(CropConfig) if hasattr(args, field.name)}
    result = crop(args.manifest, args.out, workdir=args.workdir, **settings)
    print(f"crop: {result.cropped} image(s) cropped, {len(result.failures)} failed ({result.failed}); "
          f"manifest {result.manifest}; contact sheet {result.contact_sheet}")
    return 0


def run_look(args):
    from mlkit.looking.look import look

    settings = {name: getattr(args, name) for name in LOOK_SETTINGS}
    written = look(args.model, args.images, args.out, workdir=args.workdir, compare=args.compare, top=args.top,
                   caption=args.caption, **settings)
    print(f"look: {len(written)} grid(s) in {args.out}")
    return 0
