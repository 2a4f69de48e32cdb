{{/* The release's base name, at most 50 characters (suffixes follow). */}}
{{- define "trainfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "trainfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trainfleet
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "coordinator"). */}}
{{- define "trainfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: call with (dict "root" $ "repository" "trainfleet-worker" "tag" ""). */}}
{{- define "trainfleet.image" -}}
{{- $tag := .tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .repository $tag -}}
{{- end -}}
{{- end -}}

{{/* etcd client URLs, comma-separated: the bundled members or externalEtcd.endpoints. */}}
{{- define "trainfleet.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $fullname := include "trainfleet.fullname" . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $urls = append $urls (printf "http://%s-etcd-%d.%s-etcd-peer.%s.svc:2379" $fullname $i $fullname $.Release.Namespace) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- if not .Values.externalEtcd.endpoints -}}
{{- fail "externalEtcd.endpoints: set the etcd client URLs, or etcd.enabled: true for the bundled etcd" -}}
{{- end -}}
{{- join "," .Values.externalEtcd.endpoints -}}
{{- end -}}
{{- end -}}

{{/* The artifact store URL the coordinators and workers share. */}}
{{- define "trainfleet.artifacts" -}}
{{- if .Values.artifacts.s3.bucket -}}
{{- printf "s3://%s/%s" .Values.artifacts.s3.bucket (.Values.artifacts.s3.prefix | trimPrefix "/") | trimSuffix "/" -}}
{{- else if .Values.artifacts.volume.claimName -}}
{{- .Values.artifacts.volume.mountPath -}}
{{- else -}}
{{- fail "artifacts: set artifacts.s3.bucket (with artifacts.s3.existingSecret) or artifacts.volume.claimName (a ReadWriteMany volume): the coordinators and workers must share run artifacts" -}}
{{- end -}}
{{- end -}}

{{/* Env of the S3 credentials and endpoint, for every pod that reads or writes artifacts. */}}
{{- define "trainfleet.artifactsEnv" -}}
{{- with .Values.artifacts.s3 }}
{{- if .bucket }}
- name: AWS_REGION
  value: {{ .region | quote }}
{{- if .endpoint }}
- name: AWS_ENDPOINT
  value: {{ .endpoint | quote }}
{{- if hasPrefix "http://" .endpoint }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
{{- end }}
{{- if .existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ .existingSecret }}, key: AWS_ACCESS_KEY_ID}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ .existingSecret }}, key: AWS_SECRET_ACCESS_KEY}}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Volumes of artifacts and data, and their mounts. */}}
{{- define "trainfleet.sharedVolumes" -}}
{{- if .Values.artifacts.volume.claimName }}
- name: artifacts
  persistentVolumeClaim: {claimName: {{ .Values.artifacts.volume.claimName }}}
{{- end }}
{{- if .Values.data.volume.claimName }}
- name: data
  persistentVolumeClaim: {claimName: {{ .Values.data.volume.claimName }}}
{{- end }}
{{- end -}}
{{- define "trainfleet.sharedMounts" -}}
{{- if .Values.artifacts.volume.claimName }}
- name: artifacts
  mountPath: {{ .Values.artifacts.volume.mountPath }}
{{- end }}
{{- if .Values.data.volume.claimName }}
- name: data
  mountPath: {{ .Values.data.volume.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The container security context of every trainfleet container. */}}
{{- define "trainfleet.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* The name every client verifies the coordinators' certificate as: the client Service's. */}}
{{- define "trainfleet.serviceHost" -}}
{{ include "trainfleet.fullname" . }}.{{ .Release.Namespace }}.svc
{{- end -}}

{{/* The TLS Secret, when tls is on (its name is required). */}}
{{- define "trainfleet.tlsSecret" -}}
{{- required "tls.existingSecret: name the kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt) of the coordinators" .Values.tls.existingSecret -}}
{{- end -}}

{{/* The tokens Secret, when auth is on (its name is required). */}}
{{- define "trainfleet.authSecret" -}}
{{- required "auth.existingSecret: name the Secret with the bootstrap, worker and viewer tokens" .Values.auth.existingSecret -}}
{{- end -}}

{{/* The NetworkPolicy ingress rule of the metrics port (none when metrics are off). */}}
{{- define "trainfleet.metricsIngress" -}}
{{- if .Values.metrics.enabled -}}
- ports:
    - {port: {{ .Values.metrics.port }}, protocol: TCP}
  {{- with .Values.metrics.allowFrom }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end -}}

{{/* A client's mounts of the CA (tls) and of one token (auth): call with (dict "root" $ "token" "worker"). */}}
{{- define "trainfleet.credentialMounts" -}}
{{- if .root.Values.tls.enabled }}
- {name: tls-ca, mountPath: /etc/trainfleet-tls, readOnly: true}
{{- end }}
{{- if .root.Values.auth.enabled }}
- {name: auth, mountPath: /etc/trainfleet-auth, readOnly: true}
{{- end }}
{{- end -}}

{{/* The volumes of trainfleet.credentialMounts: only the CA, and only the one token. */}}
{{- define "trainfleet.credentialVolumes" -}}
{{- if .root.Values.tls.enabled }}
- name: tls-ca
  secret:
    secretName: {{ include "trainfleet.tlsSecret" .root }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- if .root.Values.auth.enabled }}
- name: auth
  secret:
    secretName: {{ include "trainfleet.authSecret" .root }}
    items: [{key: {{ .token }}, path: {{ .token }}}]
{{- end }}
{{- end -}}
