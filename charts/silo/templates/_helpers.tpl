{{/* Labels on every object of the chart. */}}
{{- define "silo.labels" -}}
app.kubernetes.io/name: silo
app.kubernetes.io/part-of: silo
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* Selector of the operator pods (must not change between upgrades). */}}
{{- define "silo.operatorSelector" -}}
app.kubernetes.io/name: silo
app.kubernetes.io/component: operator
{{- end }}
