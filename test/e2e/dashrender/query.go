package dashrender

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"time"
)

// Sample is one point of a series.
type Sample struct {
	T time.Time
	V float64
}

// Series is one series of a query's result: its labels (with __name__ when the
// query keeps it) and its samples in time order.
type Series struct {
	Labels  map[string]string
	Samples []Sample
}

// RangeQuerier runs a PromQL range query, as Prometheus's /api/v1/query_range does.
// An instant query is asked as a range of one point: start == end.
type RangeQuerier interface {
	QueryRange(ctx context.Context, query string, start, end time.Time, step time.Duration) ([]Series, error)
}

// QueryRangeFunc lets a function be a RangeQuerier.
type QueryRangeFunc func(ctx context.Context, query string, start, end time.Time, step time.Duration) ([]Series, error)

// QueryRange calls f.
func (f QueryRangeFunc) QueryRange(ctx context.Context, query string, start, end time.Time, step time.Duration) ([]Series, error) {
	return f(ctx, query, start, end, step)
}

// QueryRangeParams are the parameters of Prometheus's GET /api/v1/query_range for
// the query (append "?" + Encode() to the path, through the API server's service
// proxy or not).
func QueryRangeParams(query string, start, end time.Time, step time.Duration) url.Values {
	seconds := func(t time.Time) string {
		return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', -1, 64)
	}
	return url.Values{
		"query": {query},
		"start": {seconds(start)},
		"end":   {seconds(end)},
		"step":  {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)},
	}
}

// ParseResponse reads the body of a Prometheus query API response: a matrix
// (query_range) or a vector (query). A response with status "error" is an error.
func ParseResponse(body []byte) ([]Series, error) {
	var resp struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Values [][2]any          `json:"values"`
				Value  *[2]any           `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("prometheus response: %w", err)
	}
	if resp.Status != "success" {
		return nil, fmt.Errorf("prometheus: status %q, %s: %s", resp.Status, resp.ErrorType, resp.Error)
	}
	if rt := resp.Data.ResultType; rt != "matrix" && rt != "vector" {
		return nil, fmt.Errorf("prometheus: result type %q, want matrix or vector", rt)
	}
	out := make([]Series, 0, len(resp.Data.Result))
	for _, r := range resp.Data.Result {
		s := Series{Labels: r.Metric}
		points := r.Values
		if r.Value != nil {
			points = [][2]any{*r.Value}
		}
		for _, p := range points {
			sample, err := parseSample(p)
			if err != nil {
				return nil, err
			}
			s.Samples = append(s.Samples, sample)
		}
		out = append(out, s)
	}
	return out, nil
}

// parseSample reads [unix seconds, "value"].
func parseSample(p [2]any) (Sample, error) {
	t, ok := p[0].(float64)
	vs, ok2 := p[1].(string)
	if !ok || !ok2 {
		return Sample{}, fmt.Errorf("prometheus: sample %v", p)
	}
	v, err := strconv.ParseFloat(vs, 64)
	if err != nil {
		return Sample{}, fmt.Errorf("prometheus: sample value %q: %w", vs, err)
	}
	sec, frac := math.Modf(t)
	return Sample{T: time.Unix(int64(sec), int64(math.Round(frac*1000))*int64(time.Millisecond)).UTC(), V: v}, nil
}
