// Package subnet holds the cluster-wide data model that weft shares with
// flannel's etcd mode: the network config stored at <prefix>/config, the
// lease records stored at <prefix>/subnets/<a.b.c.d>-<len>, subnet
// allocation, and the subnet.env file handed to the CNI plugin.
//
// Everything here is pure logic with no I/O except the subnet file, so it is
// safe to import from the CNI plugin and from weftctl. The etcd-backed lease
// registry lives in subnet/etcd.
package subnet
