"""Recording episodes as datasets: LeRobotDataset v3.0 (pyarrow, PyAV) and robomimic HDF5 (h5py).

Imports nothing heavy: pyarrow, PyAV and h5py load when a dataset is opened.
"""

from gym_remote.recording.episode import DatasetWriter, RecordedEpisode
from gym_remote.recording.recorder import FORMATS, Recorder, open_dataset
from gym_remote.recording.wrappers import RecordEpisodes, RecordVectorEpisodes

__all__ = [
    "FORMATS",
    "DatasetWriter",
    "RecordEpisodes",
    "RecordVectorEpisodes",
    "RecordedEpisode",
    "Recorder",
    "open_dataset",
]
