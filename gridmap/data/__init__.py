"""Reference data shipped with gridmap (the real 上街区 boundary, GCJ-02)."""
