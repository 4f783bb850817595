"""CelebA (Liu et al. 2015) through torchvision: aligned faces with 40 binary attributes."""

from __future__ import annotations

import os

from torchvision.datasets import CelebA

from datamodules.base import DECODE_ERRORS, CorruptFiles, ImageDataModule

ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)


class CheckedCelebA(CelebA):
    """torchvision's CelebA whose images that cannot be decoded are named (or skipped, see
    :class:`~datamodules.base.CorruptFiles`) instead of failing deep inside a DataLoader worker."""

    def __init__(self, *args, corrupt: CorruptFiles, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.corrupt = corrupt

    def __getitem__(self, index: int):
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                return super().__getitem__(i)
            except DECODE_ERRORS as err:
                path = os.path.join(self.root, self.base_folder, "img_align_celeba",
                                    self.filename[i])
                self.corrupt.failed(path, err, attempt)
        raise IndexError(index)


class CelebADataModule(ImageDataModule):
    """CelebA in torchvision's layout ``data_dir/celeba/`` (``img_align_celeba/``,
    ``list_attr_celeba.txt``, ``list_eval_partition.txt``, ...).

    Targets are the 40 attributes as a 0/1 tensor of shape ``(40,)`` (names in
    ``attribute_names``). Images are resized and centre-cropped to ``image_size`` (64 by default).
    The official validation partition serves as the validation set.

    Args: see :class:`~datamodules.base.ImageDataModule`.
    """

    name = "CelebA"
    channels = 3
    num_classes = len(ATTRIBUTES)
    label_kind = "attributes"
    default_image_size = 64
    attribute_names = ATTRIBUTES
    official_val_split = True
    download_hint = (
        "Get img_align_celeba.zip (unzipped), list_attr_celeba.txt, identity_CelebA.txt, "
        "list_bbox_celeba.txt, list_landmarks_align_celeba.txt and list_eval_partition.txt from "
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html into that folder."
    )

    def make_dataset(self, split, transform, download):
        split = {"val": "valid"}.get(split, split)
        return CheckedCelebA(self.data_dir, split=split, target_type="attr", transform=transform,
                             download=download, corrupt=self.corrupt_files())

    def expected_files(self) -> list[str]:
        names = ["img_align_celeba/", "list_attr_celeba.txt", "identity_CelebA.txt",
                 "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt",
                 "list_eval_partition.txt"]
        return [f"celeba/{n}" for n in names]

    def attribute_index(self, name: str) -> int:
        """Index of attribute ``name`` in the target vector."""
        if name not in ATTRIBUTES:
            raise ValueError(f"unknown CelebA attribute {name!r}; choose one of {', '.join(ATTRIBUTES)}")
        return ATTRIBUTES.index(name)
