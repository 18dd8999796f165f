"""Providers create nodes behind one interface (`base.Provider`)."""
