"""Installing the module on a provider's nodes: the Ansible inventory and playbook runs."""
