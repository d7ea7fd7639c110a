"""Paired training data from every source: procedural and real vertebrae, CT label volumes
(:mod:`.pairs`), the node's own path on simulated sessions (:mod:`.node_sessions`), and the alignment of
user meshes to the canonical vertebra frame (:mod:`.mesh_alignment`)."""
