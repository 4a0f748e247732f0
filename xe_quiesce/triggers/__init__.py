"""What asks for a quiesce: XAPI over xenstore, Xen Orchestra's HTTPS hook, the control socket."""
