"""The dom0 roles of the quiesce contract (xapi, snapwatchd, xenopsd's setup), reusable.

XAPI, snapwatchd and xenopsd's VSS keys were removed from every current host (contract
section 0). These modules play those roles exactly as the contract describes, over any
`XenstoreClient`: the tests' dom0 simulator wraps them, and the dom0 companion
(`xe-quiesce-host`) drives them with XenAPI. So the host side the guest is tested
against is the one that ships. Every timeout is a parameter; the defaults are the real
ones. Product code: runs on dom0's Python 3.6.
"""
