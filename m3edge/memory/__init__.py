"""The torch-free memory core the torch agent and the device runtime share (numpy and stdlib only).

- ``synaptic``   the seed's SynapticStorage: Hebbian links (capped), reconsolidation, forgetting, importance
- ``index``      bounded retrieval candidates: exact context hashes, suffix hashes, the recent FIFO
- ``retrieval``  the ContextualAssociator's fused scores over candidates, task preferences, retrieval modes
- ``knowledge``  the MemoryDistiller's knowledge graph
- ``crossbar``   the memristor crossbar device model that holds the keys
"""
