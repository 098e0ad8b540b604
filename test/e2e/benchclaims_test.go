package e2e

import (
	"encoding/json"
	"time"
)

// managedTimes is the last write each field manager made to an object (its
// managedFields, whole seconds), the status subresource's apart.
type managedTimes []struct {
	Manager     string    `json:"manager"`
	Subresource string    `json:"subresource"`
	Time        time.Time `json:"time"`
}

// last is the latest write of manager, status included.
func (m managedTimes) last(manager string) (time.Time, bool) {
	var t time.Time
	for _, f := range m {
		if f.Manager == manager && f.Time.After(t) {
			t = f.Time
		}
	}
	return t, !t.IsZero()
}

// claimPhases logs where a WaitForFirstConsumer pod's time from creation to
// scheduling went, from the objects' own timestamps (whole seconds), each step
// as median, p90 and max over the namespace's pods whose claim (named as the pod)
// is bound:
//   - pod created → claim's node selected: the scheduler's write of the claim
//     (the selected-node annotation, in its binding cycle);
//   - → PV created: the provisioner of that node (CreateVolume, the PV's create);
//   - → claim bound: kube-controller-manager's last write of the claim (the PV
//     controller binding claim and PV);
//   - → pod scheduled: the scheduler seeing the binding (it polls once a second)
//     and binding the pod.
func (c *cluster) claimPhases() {
	c.t.Helper()
	type meta struct {
		Name              string       `json:"name"`
		CreationTimestamp time.Time    `json:"creationTimestamp"`
		ManagedFields     managedTimes `json:"managedFields"`
	}
	var pods struct {
		Items []struct {
			Metadata meta `json:"metadata"`
			Status   struct {
				Conditions []struct {
					Type               string    `json:"type"`
					LastTransitionTime time.Time `json:"lastTransitionTime"`
				} `json:"conditions"`
			} `json:"status"`
		} `json:"items"`
	}
	var claims struct {
		Items []struct {
			Metadata meta `json:"metadata"`
			Spec     struct {
				VolumeName string `json:"volumeName"`
			} `json:"spec"`
		} `json:"items"`
	}
	var pvs struct {
		Items []struct {
			Metadata meta `json:"metadata"`
		} `json:"items"`
	}
	for _, q := range []struct {
		args []string
		into any
	}{
		{[]string{"get", "pods", "-o", "json"}, &pods},
		{[]string{"get", "pvc", "-o", "json", "--show-managed-fields"}, &claims},
	} {
		out, err := c.try(q.args...)
		if err == nil {
			err = json.Unmarshal([]byte(out), q.into)
		}
		if err != nil {
			c.t.Logf("claim phases: %v", err)
			return
		}
	}
	out, err := c.tryNS("", "get", "pv", "-o", "json")
	if err == nil {
		err = json.Unmarshal([]byte(out), &pvs)
	}
	if err != nil {
		c.t.Logf("claim phases: %v", err)
		return
	}
	pvCreated := map[string]time.Time{}
	for _, pv := range pvs.Items {
		pvCreated[pv.Metadata.Name] = pv.Metadata.CreationTimestamp
	}
	type claimTimes struct {
		selected, bound, pv time.Time
	}
	byName := map[string]claimTimes{}
	for _, cl := range claims.Items {
		sel, okS := cl.Metadata.ManagedFields.last("kube-scheduler")
		bound, okB := cl.Metadata.ManagedFields.last("kube-controller-manager")
		pv, okP := pvCreated[cl.Spec.VolumeName]
		if okS && okB && okP {
			byName[cl.Metadata.Name] = claimTimes{selected: sel, bound: bound, pv: pv}
		}
	}
	var toSelected, toPV, toBound, toScheduled []time.Duration
	for _, p := range pods.Items {
		ct, ok := byName[p.Metadata.Name]
		if !ok {
			continue
		}
		var scheduled time.Time
		for _, k := range p.Status.Conditions {
			if k.Type == "PodScheduled" {
				scheduled = k.LastTransitionTime
			}
		}
		if scheduled.IsZero() {
			continue
		}
		toSelected = append(toSelected, ct.selected.Sub(p.Metadata.CreationTimestamp))
		toPV = append(toPV, ct.pv.Sub(ct.selected))
		toBound = append(toBound, ct.bound.Sub(ct.pv))
		toScheduled = append(toScheduled, scheduled.Sub(ct.bound))
	}
	if len(toSelected) == 0 {
		c.t.Logf("claim phases: no pod with a bound claim and all its timestamps")
		return
	}
	for _, ph := range []struct {
		name string
		d    []time.Duration
	}{
		{"pod created to claim's node selected", toSelected},
		{"node selected to PV created", toPV},
		{"PV created to claim bound", toBound},
		{"claim bound to pod scheduled", toScheduled},
	} {
		c.t.Logf("claim phase %s over %d pods: median %v, p90 %v, max %v", ph.name, len(ph.d), median(ph.d), pct(ph.d, 0.9), maxOf(ph.d))
	}
}
