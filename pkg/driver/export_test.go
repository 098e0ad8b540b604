package driver

// OrphanPools is orphanPools, for the orphan scan's tests on a real engine.
var OrphanPools = orphanPools
