"""`mlkit audit`: a thin parser over `mlkit.audit` and `mlkit.auditing.apply_corrections`."""

import argparse
from dataclasses import fields

from mlkit.auditing.config import AuditConfig
from mlkit.options import add_options

EPILOG = """\
examples:
  mlkit audit bottlenecks/stamps_all_mobilenetv2_inet_avg.h5
  mlkit audit CACHE --folds 0                             # duplicates and outliers only
  mlkit audit CACHE --near-verify-threshold 0.96          # fewer near duplicates: only closer copies
  mlkit audit CACHE --top stamps_all_mobilenetv2_inet_avg_1x1024d5_lr11_b64   # fold tops with a tuned run's settings
  mlkit audit CACHE --review 50                           # a shorter shortlist
  mlkit audit --apply audit/<cache>/review.csv            # after filling its decision column

Writes WORKDIR/audit/<cache>/: issues.csv (one row per finding: leaks first, then
conflicts, duplicates, label errors, outliers), review.csv (the --review shortlist:
each kind's best in turn), summary.json (how many of each kind lie beyond the
shortlist), groups.csv (for `mlkit data split --group-duplicates`), scores.npz and
a contact sheet <kind>.png per kind on the shortlist. Fill review.csv's (or
issues.csv's) decision column with accept or reject and run
--apply: accepted findings drop their row or take the suggested labels (edit the
suggested column first to choose other labels). The corrected manifest is written
beside the original as <name>.audited.csv; the original is never overwritten.
"""


def register(subparsers):
    parser = subparsers.add_parser(
        "audit", help="find duplicates, split leaks, likely label errors and outliers in a cache",
        description="Audit a bottleneck cache: exact duplicates (image sha256), near duplicates (pixel thumbnails, "
        "verified on the images), "
        "leaks across splits, likely label errors (out-of-fold scores of k-fold top models) and outliers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", nargs="?", help="bottleneck cache (.h5) from cache-features")
    parser.add_argument("--workdir", default=".", help="workspace folder; writes WORKDIR/audit/<cache>/ (default: .)")
    parser.add_argument("--apply", metavar="ISSUES_CSV", help="write a corrected manifest from an edited issues.csv")
    parser.add_argument("--manifest", help="with --apply: the manifest to correct (default: the one the cache was made from)")
    parser.add_argument("--out", help="with --apply: where to write (default: <manifest>.audited.<suffix> beside it)")
    add_options(parser, AuditConfig)
    parser.set_defaults(func=run, parser=parser)


def run(args):
    if args.apply:
        from mlkit.auditing.apply import apply_corrections

        apply_corrections(args.apply, manifest=args.manifest, out=args.out)
        return 0
    if not args.cache:
        args.parser.error("give a CACHE to audit, or --apply ISSUES_CSV")
    from mlkit.auditing.run import audit

    result = audit(args.cache, workdir=args.workdir, **{field.name: getattr(args, field.name) for field in fields(AuditConfig)})
    counts = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in result.summary["findings"].items())
    if result.issues.empty:
        print(f"audit: no findings; the report is in {result.folder}")
    else:
        print(f"audit: {len(result.issues)} findings ({counts}) in {result.folder}")
    return 0
