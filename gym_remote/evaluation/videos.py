"""Videos of evaluated episodes: H.264 mp4 files written with PyAV (``pip install av``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["write_video"]


def write_video(
    path: str | Path,
    frames: Sequence[np.ndarray] | np.ndarray,
    fps: float,
    *,
    gop: int | None = None,
    crf: int | None = None,
) -> None:
    """Writes ``frames`` (HxWx3 uint8, upright) to ``path`` at ``fps`` frames a second, frame
    ``i`` at ``i / fps`` seconds.

    Odd sizes are padded by a row or column (H.264 in yuv420p needs even ones).

    Args:
        gop: Frames from one key frame to the next (None: the encoder's choice).
        crf: The encoder's constant quality (None: its default, 23; lower is better).

    Raises:
        ImportError: PyAV is not installed; says how to install it.
    """
    try:
        import av
    except ImportError:
        raise ImportError("videos need PyAV: pip install av (or '/path/to/gym-remote[eval]')") from None
    height, width = frames[0].shape[:2]
    padded_height, padded_width = height + height % 2, width + width % 2
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        options = {"crf": str(crf)} if crf is not None else {}
        stream = container.add_stream("libx264", rate=round(fps), options=options)
        if gop is not None:
            stream.codec_context.gop_size = gop
        stream.width, stream.height, stream.pix_fmt = padded_width, padded_height, "yuv420p"
        for frame in frames:
            if frame.shape[:2] != (padded_height, padded_width):
                frame = np.pad(frame, ((0, padded_height - height), (0, padded_width - width), (0, 0)))
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
            )
        container.mux(stream.encode())
