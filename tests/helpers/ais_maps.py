"""The decoder's three maps as a perfect decoder would predict them from known instance labels.

Made like micro-sam's training targets (torch-em's per-object distance transform): foreground =
labels > 0; per object, the distance to its centre (the most interior point when the centroid lies
outside it) and the inverted distance to its boundary, both normalised to [0, 1]; background 1.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def maps_from_labels(labels: np.ndarray) -> np.ndarray:
    """float32 (3, H, W): foreground, centre distance, boundary distance of `labels`."""
    labels = np.asarray(labels)
    maps = np.ones((3, *labels.shape), np.float32)
    maps[0] = labels > 0
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        obj = labels[box] == index
        inner = ndi.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
        centre = np.array(ndi.center_of_mass(obj))
        if not obj[tuple(np.round(centre).astype(int))]:
            centre = np.array(np.unravel_index(np.argmax(inner), obj.shape), float)
        yy, xx = np.indices(obj.shape)
        to_centre = np.hypot(yy - centre[0], xx - centre[1])
        maps[1][box][obj] = (to_centre / max(to_centre[obj].max(), 1e-6))[obj]
        maps[2][box][obj] = (1.0 - inner / inner.max())[obj]
    return maps
