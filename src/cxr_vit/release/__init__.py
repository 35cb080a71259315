"""The full NIH ChestX-ray14 release: its files (:mod:`.files`), fetching them (:mod:`.download`), and the one
command from nothing to the official-test figure beside the published ones (:mod:`.reproduce`)."""

from .download import ChecksumMismatchError, DownloadError, DownloadResult, download_files, download_with_kaggle
from .files import RELEASE_FILES, ReleaseFile, read_url_list, release_files

__all__ = [
    "RELEASE_FILES",
    "ChecksumMismatchError",
    "DownloadError",
    "DownloadResult",
    "ReleaseFile",
    "download_files",
    "download_with_kaggle",
    "read_url_list",
    "release_files",
]
