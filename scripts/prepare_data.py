"""Turn NIH ChestX-ray14 images + label CSV into a dataset folder that ``datasets.load_dataset`` reads.

    # the Kaggle sample, shrunk once to 256 px for 224-px training
    python scripts/prepare_data.py --images_dir sample/images --labels_csv sample/sample_labels.csv \\
        --output_dir data/nih_sample_256 --image_size 256

    # the full release with the official test list (--split_seed: the patient-wise validation carve-out)
    python scripts/prepare_data.py --config full --images_dir nih --labels_csv nih/Data_Entry_2017_v2020.csv \\
        --train_val_list nih/train_val_list.txt --test_list nih/test_list.txt \\
        --output_dir data/nih_full_256 --image_size 256 --num_proc 8

    # ... and publish it: load_dataset("you/nih-chestxray14-256") then works anywhere
    python scripts/prepare_data.py ... --push_to_hub --hub_dataset_id you/nih-chestxray14-256 [--private]

    # other hospitals' releases, labels mapped to ChestX-ray14's by name (docs/external.md)
    python scripts/prepare_data.py --source chexpert --images_dir chexpert \\
        --labels_csv chexpert/CheXpert-v1.0-small/valid.csv --output_dir data/chexpert_valid_256 --image_size 256
    python scripts/prepare_data.py --source mimic_cxr --images_dir mimic-cxr-jpg/2.0.0 \\
        --labels_csv mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-chexpert.csv \\
        --metadata_csv mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-metadata.csv \\
        --split_csv mimic-cxr-jpg/2.0.0/mimic-cxr-2.0.0-split.csv --output_dir data/mimic_256 --image_size 256
    python scripts/prepare_data.py --source padchest --images_dir padchest \\
        --labels_csv padchest/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv --output_dir data/padchest_256
    python scripts/prepare_data.py --source vindr_cxr --images_dir vindr-cxr/1.0.0 --readers majority \\
        --labels_csv vindr-cxr/1.0.0/annotations/image_labels_test.csv --output_dir data/vindr_test_256
"""

import logging
import sys

from transformers import HfArgumentParser

from cxr_vit import HubAccessError, NIHDataError, PrepareArguments, check_push_access, ensure_prepared, push_dataset
from cxr_vit.data import describe_missing_positives


def main(args: PrepareArguments) -> int:
    private = args.private or None
    try:
        repo_id = None
        if args.push_to_hub:  # check the token and repo before the long preparation
            repo_id = check_push_access(args.hub_dataset_id, args.hub_token, "dataset", private)
        report = ensure_prepared(
            args.output_dir, args.images_dir, args.labels_csv, overwrite=args.overwrite_prepared, **args.build_kwargs()
        )
        if report is None:
            print(f"{args.output_dir} is up to date: prepared from these files with these settings")
        else:
            splits = ", ".join(f"{name} {rows}" for name, rows in report.split_rows.items())
            print(f"wrote {args.output_dir}: {report.csv_rows} CSV rows -> {splits}; skipped {report.num_skipped}")
            if report.num_unlisted:
                print(f"note: {report.num_unlisted} image(s) in {args.images_dir} are not in the CSV and were not used")
            if report.skipped:
                print("skipped: " + ", ".join(report.skipped[:20]) + (" ..." if report.num_skipped > 20 else ""))
            if report.source != "nih":
                annotated = ", ".join(report.annotated_labels)
                print(f"{report.source} annotates {len(report.annotated_labels)} of 15 labels ({annotated})")
                print(f"counts: {report.counts}")
            if report.unknown_labels:
                unknown = list(report.unknown_labels.items())
                shown = ", ".join(f"{term!r} {count}" for term, count in unknown[:10]) + (" ..." * (len(unknown) > 10))
                print(f"note: {len(unknown)} label string(s) not in the label map, not used (images): {shown}")
            if report.labels_without_positives:
                missing = describe_missing_positives(report.labels_without_positives)
                print(f"warning: labels without a positive image in some split (no AUC there): {missing}")
        if repo_id:
            print(f"pushed to {push_dataset(args.output_dir, repo_id, args.hub_token, private)}")
    except (NIHDataError, HubAccessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (prepare_args,) = HfArgumentParser(PrepareArguments).parse_args_into_dataclasses()
    sys.exit(main(prepare_args))
