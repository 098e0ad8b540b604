package driver

// OrphanPools is orphanPools, for the orphan scan's tests on a real engine.
var OrphanPools = orphanPools

// PVListerMux is pvListerMux, for the pv-lister's tests against a fake API server.
var PVListerMux = pvListerMux
