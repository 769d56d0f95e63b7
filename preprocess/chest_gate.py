"""The frontal-chest gate: which sources are frontal chest films by their metadata (DICOM Modality,
BodyPartExamined, ViewPosition; NIH's View Position), and which images are too small or flat to be films."""

from __future__ import annotations

import dataclasses

from contracts.gate_settings import BODY_PARTS, MODALITIES, VIEWS

# The tags a DICOM file is checked by, in the order a reason names them.
TAGS = ("Modality", "BodyPartExamined", "ViewPosition")
NIH_VIEW = "View Position"  # the Data_Entry column


@dataclasses.dataclass(frozen=True)
class Gate:
    """The accepted values of each tag (upper case); an empty one accepts anything, unchecked."""
    modalities: tuple[str, ...] = MODALITIES
    body_parts: tuple[str, ...] = BODY_PARTS
    views: tuple[str, ...] = VIEWS

    @classmethod
    def of(cls, config) -> Gate:
        """The gate a BuildConfig sets."""
        return cls(config.accepted_modalities, config.accepted_body_parts, config.accepted_views)


DEFAULT = Gate()


def check(gate: Gate, values: dict[str, str | None]) -> tuple[str | None, list[str]]:
    """(why the source is not a frontal chest film, or None; the gate's tags it lacks, unchecked).
    `values` maps tag names (`TAGS`, or `NIH_VIEW` for the view) to their text, None when absent."""
    accepted = {"Modality": gate.modalities, "BodyPartExamined": gate.body_parts, "ViewPosition": gate.views,
                NIH_VIEW: gate.views}
    what = {"Modality": "a projection radiograph", "BodyPartExamined": "the chest",
            "ViewPosition": "a frontal view", NIH_VIEW: "a frontal view"}
    missing = []
    for tag, value in values.items():
        if not accepted[tag]:
            continue
        if not value:
            missing.append(tag)
        elif value.strip().upper() not in accepted[tag]:
            return (f"{tag} {value.strip()} is not {what[tag]} (accepted: {', '.join(accepted[tag])}): not a "
                    "frontal chest film; skipped"), []
    return None, missing


def tag_values(tags) -> dict[str, str | None]:
    """A DICOM header's (preprocess.dicom.read_tags) values of the gate's TAGS."""
    return dict(zip(TAGS, (tags.modality, tags.body_part, tags.view_position)))


def implausible(size: tuple[int, int], std: float, min_side: int, min_std: float) -> str | None:
    """Why an image of `size` (width, height, before resizing) whose decoded gray pixels have standard
    deviation `std` cannot be a film, or None."""
    width, height = size
    if min(width, height) < min_side:
        return (f"{width}x{height} image: its shorter side is below {min_side} px (min_image_side), too "
                "small to be a radiograph")
    if std < min_std:
        return (f"nearly constant pixels (standard deviation {std:.2f} grey levels, below min_image_std="
                f"{min_std:g}): not a radiograph")
    return None
