package main

import "testing"

func TestCountSeries(t *testing.T) {
	body := `# HELP berth_pool_volumes Committed volumes in the pool.
# TYPE berth_pool_volumes gauge
berth_pool_volumes{kind="dir",node="n1",pool="default"} 3
go_goroutines 12

berth_volume_healthy{namespace="ns",persistentvolumeclaim="c",pool="default",volume_id="b1-default-0"} 1
`
	if all, berth := countSeries(body); all != 3 || berth != 2 {
		t.Errorf("countSeries = %d, %d; want 3, 2", all, berth)
	}
}
