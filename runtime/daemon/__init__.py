"""adtk.runtime.daemon: the scoring daemon behind `adtk serve` (runs for months on a camera).

    source (capture thread) -> FrameQueue (bounded, drops oldest, counted) -> scoring loop -> sinks
                                                    ModelWatcher (thread) -> verified Detector, swapped between frames
    ApiServer (threads): GET /health /model /metrics, POST /predict

Torch-free like the rest of adtk.runtime. OpenCV (video sources) and paho-mqtt (MQTT sink) are optional
extras (`pip install 'adtk[serve]'` for both), imported only when used.
"""
