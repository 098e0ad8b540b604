package storage

// TopologyKey is the topology segment that names a node: every node-local volume is
// accessible where its value is the node's ID; shared pools' volumes carry none.
const TopologyKey = "topology.berth.csi.io/node"
