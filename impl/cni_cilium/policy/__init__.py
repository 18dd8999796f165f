"""Network policy: CiliumClusterwideNetworkPolicy parsing, identities and the translation
into the datapath's policy maps (pure), and the decoding of flow events (pure)."""
