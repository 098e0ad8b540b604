package dashrender

import (
	"math"
	"testing"
	"time"
)

func TestParseResponse(t *testing.T) {
	matrix := `{"status":"success","data":{"resultType":"matrix","result":[
		{"metric":{"__name__":"berth_pool_served","pool":"default"},"values":[[1772359200,"1"],[1772359260.5,"0"]]},
		{"metric":{"pool":"shared"},"values":[[1772359200,"NaN"]]}]}}`
	got, err := ParseResponse([]byte(matrix))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Labels["pool"] != "default" || len(got[0].Samples) != 2 {
		t.Fatalf("series %+v", got)
	}
	if s := got[0].Samples[1]; !s.T.Equal(time.Date(2026, 3, 1, 10, 1, 0, 5e8, time.UTC)) || s.V != 0 {
		t.Errorf("sample %+v, want 10:01:00.5 value 0", s)
	}
	if !math.IsNaN(got[1].Samples[0].V) {
		t.Errorf("NaN read as %v", got[1].Samples[0].V)
	}

	vector := `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1772359200,"3.5"]}]}}`
	got, err = ParseResponse([]byte(vector))
	if err != nil || len(got) != 1 || got[0].Samples[0].V != 3.5 {
		t.Errorf("vector: %+v, %v", got, err)
	}

	for name, body := range map[string]string{
		"error":    `{"status":"error","errorType":"bad_data","error":"parse error at char 5"}`,
		"scalar":   `{"status":"success","data":{"resultType":"scalar","result":[1772359200,"1"]}}`,
		"value":    `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1772359200,"x"]]}]}}`,
		"no time":  `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[["t","1"]]}]}}`,
		"not JSON": `<html>`,
	} {
		if _, err := ParseResponse([]byte(body)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestQueryRangeParams(t *testing.T) {
	start := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	v := QueryRangeParams(`up{job="x"}`, start, start.Add(time.Hour+500*time.Millisecond), 90*time.Second)
	if got, want := v.Encode(), "end=1772362800.5&query=up%7Bjob%3D%22x%22%7D&start=1772359200&step=90"; got != want {
		t.Errorf("params %s, want %s", got, want)
	}
}
