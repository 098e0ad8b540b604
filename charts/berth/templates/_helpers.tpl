{{- define "berth.name" -}}berth{{- end -}}

{{- define "berth.labels" -}}
app.kubernetes.io/name: berth
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "berth.selector" -}}
app.kubernetes.io/name: berth
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end -}}

{{- define "berth.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The directory, on the host and in the pod, holding the CSI socket. */}}
{{/* An adoptRoots entry's path: the entry itself (a plain path) or its path key. */}}
{{- define "berth.adoptRootPath" -}}
{{- if kindIs "map" . }}{{ required "adoptRoots: an entry needs a path" .path }}{{ else }}{{ . }}{{ end }}
{{- end -}}

{{- define "berth.pluginDir" -}}
{{ .Values.kubeletDir }}/plugins/{{ .Values.driverName }}
{{- end -}}

{{/* Environment that points a container at the API server when pods use the host network. */}}
{{- define "berth.apiEnv" -}}
{{- if .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.apiServer.host | quote }}
{{- end }}
{{- if .Values.apiServer.port }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.apiServer.port | quote }}
{{- end }}
{{- end -}}

{{/* Sidecars only talk to the CSI socket and the API server. */}}
{{- define "berth.sidecarSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The shared pools (a YAML list): the controller Deployment serves exactly these. */}}
{{- define "berth.sharedPools" -}}
{{- $shared := list -}}
{{- range .Values.pools }}{{ if eq .kind "shared" }}{{ $shared = append $shared . }}{{ end }}{{ end -}}
{{- toYaml $shared -}}
{{- end -}}

{{- define "berth.controllerSelector" -}}
app.kubernetes.io/name: berth
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{/* The host directories a driver container needs for the given pools (a YAML list of
{name, path}). A node-local pool: its path. A shared pool with a source: none, as
the driver mounts it at its path inside its own container, which must not be a
mount point of something else. An operator-mounted shared pool: the parent of its
path, so that the pool path is a mount point in the container only when the host
has the distributed filesystem mounted there (a bind of the path itself always is),
with HostToContainer propagation, so that a remount on the host (after its client
died) reaches a running driver. */}}
{{- define "berth.poolDirs" -}}
{{- $dirs := list -}}
{{- $seen := dict -}}
{{- range .pools -}}
{{- $dir := .path -}}
{{- if eq .kind "shared" }}{{ $dir = ternary "" (dir .path) (not (empty .source)) }}{{ end -}}
{{- if and $dir (not (hasKey $seen $dir)) -}}
{{- if eq $dir "/" }}{{ fail (printf "pool %s: an operator-mounted shared pool needs a path below a directory other than /" .name) }}{{ end -}}
{{- $_ := set $seen $dir true -}}
{{- $dirs = append $dirs (dict "name" (printf "pool-%d" (len $dirs)) "path" $dir "shared" (eq .kind "shared")) -}}
{{- end -}}
{{- end -}}
{{- toYaml $dirs -}}
{{- end -}}

{{/* The API credentials of a container that calls the API server: what the kubelet
projects by default (a bound token, the cluster CA, the namespace), at the usual path.
Pods set automountServiceAccountToken: false, so a container without this mount (the
privileged driver, which never calls the API) holds no token. */}}
{{- define "berth.apiAccessMount" -}}
- name: api-access
  mountPath: /var/run/secrets/kubernetes.io/serviceaccount
  readOnly: true
{{- end -}}

{{- define "berth.apiAccessVolume" -}}
- name: api-access
  projected:
    defaultMode: 0444
    sources:
    - serviceAccountToken:
        path: token
        expirationSeconds: 3607
    - configMap:
        name: kube-root-ca.crt
        items:
        - key: ca.crt
          path: ca.crt
    - downwardAPI:
        items:
        - path: namespace
          fieldRef:
            apiVersion: v1
            fieldPath: metadata.namespace
{{- end -}}

{{/* "true" when the orphan scan is on (orphanScan.interval neither empty nor "0"):
the node pods then run the pv-lister container, and its ServiceAccount may list
PersistentVolumes. */}}
{{- define "berth.orphanScan" -}}
{{- $i := toString .Values.orphanScan.interval -}}
{{- if and $i (ne $i "0") }}true{{ end -}}
{{- end -}}

{{/* "true" when the node pods run the pv-lister container: for the orphan scan
(berth.orphanScan), and for the transfer channel, whose copies between nodes ask it
where a volume or snapshot lives (GET /locate). The driver is then given its
socket (--pv-lister-endpoint). */}}
{{- define "berth.pvLister" -}}
{{- if or (include "berth.orphanScan" .) .Values.transfer.enabled }}true{{ end -}}
{{- end -}}

{{- /* The Secret holding the transfer channel's CA: the user's, or the chart's. */ -}}
{{- define "berth.transferSecret" -}}
{{- .Values.transfer.existingSecret | default (printf "%s-transfer-ca" .Release.Name) -}}
{{- end -}}

{{/* "true" when the chart runs the mover (mover.enabled): it needs the transfer
channel, which copies a claim to another node. */}}
{{- define "berth.mover" -}}
{{- if and .Values.mover.enabled .Values.transfer.enabled }}true{{ end -}}
{{- end -}}
