"""Fetch the NIH ChestX-ray14 release: the 12 image archives, the label CSV, the box list and the split lists.

    # everything, 4 files at a time, into data/nih (resumes a run that was interrupted)
    python scripts/download_nih.py --output_dir data/nih --urls nih_urls.txt

    # the archives only, from the package's list of NIH's URLs
    python scripts/download_nih.py --output_dir data/nih --only images_001.tar.gz images_002.tar.gz

    # from a mirror that serves the files under their release names
    CXR_VIT_NIH_MIRROR=https://mirror.example.org/nih python scripts/download_nih.py --output_dir data/nih

    # Kaggle's copy (nih-chest-xrays/data) with the Kaggle CLI
    python scripts/download_nih.py --output_dir data/nih --kaggle

A URL list has one file per line: ``name url [size_bytes [sha256]]``. Then prepare straight from the archives:
``python scripts/prepare_data.py --images_dir data/nih ...`` (no extraction needed).
Exit code: 0 done, 2 a file could not be fetched or verified (the message names it).
"""

import logging
import sys
from dataclasses import dataclass, field

from cxr_vit.arguments import parse_script_arguments
from cxr_vit.release import DownloadError, download_files, download_with_kaggle, release_files
from cxr_vit.release.download import summary
from cxr_vit.release.files import UrlListError


@dataclass
class DownloadArguments:
    output_dir: str = field(metadata={"help": "Where the files go (the archives are not extracted)."})
    urls: str | None = field(
        default=None, metadata={"help": "URL list file replacing the package's (env CXR_VIT_NIH_URLS)."}
    )
    only: list[str] | None = field(default=None, metadata={"help": "Fetch only these file names."})
    workers: int = field(default=4, metadata={"help": "Files fetched at a time."})
    retries: int = field(
        default=3,
        metadata={"help": "Retries per file after a failed attempt (1, 2, 4 ... s apart, or as Retry-After asks)."},
    )
    verify: bool = field(default=False, metadata={"help": "Hash files already present again (else size/mtime)."})
    kaggle: bool = field(default=False, metadata={"help": "Use the Kaggle CLI (nih-chest-xrays/data) instead."})


def main(args: DownloadArguments) -> int:
    try:
        if args.kaggle:
            print(f"Kaggle's copy is in {download_with_kaggle(args.output_dir)}")
            return 0
        files = release_files(args.urls, args.only)
        results = download_files(files, args.output_dir, workers=args.workers, retries=args.retries, verify=args.verify)
    except (DownloadError, UrlListError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(results))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (download_args,) = parse_script_arguments(DownloadArguments)
    sys.exit(main(download_args))
