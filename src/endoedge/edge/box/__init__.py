"""Operations on the box: the systemd installer, the bundle store (versions, ``current``, rollback) and
the TensorRT engine build and cache."""
