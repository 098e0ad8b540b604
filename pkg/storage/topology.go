package storage

// TopologyKey is the topology segment that names a node: every node-local volume is
// accessible where its value is the node's ID; shared pools' volumes carry none.
const TopologyKey = "topology.berth.csi.io/node"

// AccessibleFrom reports whether the pool's volumes can be reached from a topology
// (its segments): a shared pool's from anywhere, as every node mounts its root; a
// node-local pool's only from node, the node serving it.
func (p *Pool) AccessibleFrom(node string, segments map[string]string) bool {
	if p.Shared() {
		return true
	}
	v, ok := segments[TopologyKey]
	return ok && v == node
}
